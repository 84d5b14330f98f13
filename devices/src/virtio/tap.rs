//! A TAP network interface opened through `/dev/net/tun` for virtio-net.
//!
//! The interface is opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, a
//! 12-byte vnet header (`struct virtio_net_hdr_v1`, what a VERSION_1 driver
//! uses) set with `TUNSETVNETHDRSZ`, all offloads off (`TUNSETOFFLOAD 0`, so
//! the host stack hands over complete, checksummed frames) and
//! `O_NONBLOCK`. Every read returns one frame prefixed with the header;
//! every write takes one.
//!
//! Opening needs CAP_NET_ADMIN, or an existing persistent tap owned by the
//! user (`ip tuntap add NAME mode tap user USER`). A tap that did not exist
//! before is removed by the kernel when the last descriptor closes.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, RawFd};

/// Size of `struct virtio_net_hdr_v1`.
pub const VNET_HDR_LEN: usize = 12;

const IFNAMSIZ: usize = 16;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
// _IOW('T', 202, int), _IOW('T', 216, int), _IOW('T', 208, unsigned int).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("invalid tap interface name {0:?} (1 to 15 bytes, no '/', NUL or whitespace)")]
    BadName(String),
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(io::Error),
    #[error(
        "TUNSETIFF {name} failed (needs CAP_NET_ADMIN or a persistent tap owned by you): {source}"
    )]
    SetIff { name: String, source: io::Error },
    #[error("cannot configure tap {name} ({what}): {source}")]
    Configure {
        name: String,
        what: &'static str,
        source: io::Error,
    },
}

/// `struct ifreq` with the `ifr_flags` member of the union.
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

/// An open TAP interface. See the module documentation.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    /// Test-only: make this many next reads fail with EIO (a TAP error).
    #[cfg(test)]
    pub(crate) fail_reads: std::sync::atomic::AtomicU32,
}

impl Tap {
    /// Open (creating if needed) the tap interface `name`.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.is_empty()
            || name.len() >= IFNAMSIZ
            || name
                .bytes()
                .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
        {
            return Err(TapError::BadName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut ifr = IfReq {
            name: [0; IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        ifr.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReq`
        // lays out (40 bytes); the fd is valid for the call.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut ifr) };
        if ret < 0 {
            return Err(TapError::SetIff {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        let len = ifr.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
        let actual = String::from_utf8_lossy(&ifr.name[..len]).into_owned();
        let configure = |what: &'static str, ret: libc::c_int| {
            if ret < 0 {
                Err(TapError::Configure {
                    name: actual.clone(),
                    what,
                    source: io::Error::last_os_error(),
                })
            } else {
                Ok(())
            }
        };
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer.
        configure("TUNSETVNETHDRSZ", unsafe {
            libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ as _, &hdr_len)
        })?;
        // SAFETY: TUNSETOFFLOAD takes its flags by value.
        configure("TUNSETOFFLOAD", unsafe {
            libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD as _, 0 as libc::c_ulong)
        })?;
        Ok(Tap::from_file(file, &actual))
    }

    /// A tap stand-in over any packet-preserving file (a datagram socket in
    /// tests). The file should be non-blocking.
    pub fn from_file(file: File, name: &str) -> Tap {
        Tap {
            file,
            name: name.to_string(),
            #[cfg(test)]
            fail_reads: Default::default(),
        }
    }

    /// The interface name the kernel assigned.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Read one frame (vnet header included). `WouldBlock` when none.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering::SeqCst;
            if self.fail_reads.load(SeqCst) > 0 {
                self.fail_reads.fetch_sub(1, SeqCst);
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
        }
        (&self.file).read(buf)
    }

    /// Write one frame (vnet header included).
    pub fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    /// True when the process may create tap interfaces (root with
    /// CAP_NET_ADMIN, and /dev/net/tun present).
    pub fn can_create_tap() -> bool {
        let caps = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("CapEff:"))
                    .and_then(|l| u64::from_str_radix(l[7..].trim(), 16).ok())
            })
            .unwrap_or(0);
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        root && caps & (1 << 12) != 0 && std::path::Path::new("/dev/net/tun").exists()
    }

    /// [`can_create_tap`], or a skip of `test` (a failure under CI).
    pub fn tap_or_skip(test: &str) -> bool {
        if can_create_tap() {
            return true;
        }
        crate::test_env::skip(test, "needs root with CAP_NET_ADMIN and /dev/net/tun");
        false
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::tap_or_skip;
    use super::*;

    #[test]
    fn bad_tap_names_are_refused() {
        for n in ["", "a/b", "sixteen-chars-xx", "a b"] {
            assert!(matches!(Tap::open(n), Err(TapError::BadName(_))), "{n}");
        }
    }

    #[test]
    fn tap_opens_with_vnet_header_when_privileged() {
        if !tap_or_skip("tap_opens_with_vnet_header_when_privileged") {
            return;
        }
        let tap = Tap::open("spvmtest0").unwrap();
        assert_eq!(tap.name(), "spvmtest0");
        assert!(std::path::Path::new("/sys/class/net/spvmtest0").exists());
        // Nothing to read yet: non-blocking.
        let mut buf = [0u8; 64];
        let e = tap.read_frame(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(tap);
        // Not persistent: gone with the last descriptor.
        assert!(!std::path::Path::new("/sys/class/net/spvmtest0").exists());
    }
}
