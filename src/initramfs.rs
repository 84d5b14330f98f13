//! `--add HOSTPATH[:GUESTPATH]`: host files and directories appended to the
//! initrd as a second newc cpio archive. Linux unpacks concatenated archives
//! in order (init/initramfs.c), so an added file replaces one of the same
//! name and directories merge.

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One `--add` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddSpec {
    pub host: PathBuf,
    /// Absolute path in the guest, without a trailing slash.
    pub guest: String,
}

/// Parse `HOSTPATH[:GUESTPATH]`; GUESTPATH defaults to `/` + the file name.
pub fn parse_add(spec: &str) -> Result<AddSpec> {
    let bad = |why: &str| Error::DeviceSpec(format!("bad --add '{spec}': {why}"));
    let (host, guest) = match spec.split_once(':') {
        Some((h, g)) => (h, Some(g)),
        None => (spec, None),
    };
    if host.is_empty() {
        return Err(bad("no host path"));
    }
    let host = PathBuf::from(host);
    let guest = match guest {
        Some(g) if g.starts_with('/') && g.len() > 1 => g.trim_end_matches('/').to_string(),
        Some(_) => return Err(bad("the guest path must be absolute and not '/'")),
        None => {
            let name = fs::canonicalize(&host)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .ok_or_else(|| bad("no such file or directory"))?;
            format!("/{name}")
        }
    };
    if guest.split('/').any(|c| c == "..") {
        return Err(bad("'..' in the guest path"));
    }
    Ok(AddSpec { host, guest })
}

/// A newc cpio archive being written.
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let name = name.trim_start_matches('/');
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() & 3 != 0 {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
/// The largest single file `--add` takes (the whole initrd must fit in RAM).
const MAX_FILE: u64 = 1 << 30;

fn add_path(cpio: &mut Cpio, host: &Path, guest: &str) -> Result<()> {
    let err = |e: std::io::Error| Error::File {
        what: "--add path",
        path: host.to_path_buf(),
        err: e,
    };
    let meta = fs::symlink_metadata(host).map_err(err)?;
    let perm = meta.permissions().mode() & 0o7777;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(host).map_err(err)?;
        cpio.entry(
            guest,
            S_IFLNK | 0o777,
            target.as_os_str().as_encoded_bytes(),
        );
    } else if ft.is_dir() {
        cpio.entry(guest, S_IFDIR | perm, &[]);
        let mut names: Vec<_> = fs::read_dir(host)
            .map_err(err)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .map_err(err)?;
        names.sort();
        for n in names {
            add_path(
                cpio,
                &host.join(&n),
                &format!("{guest}/{}", n.to_string_lossy()),
            )?;
        }
    } else if ft.is_file() {
        if meta.size() > MAX_FILE {
            return Err(Error::DeviceSpec(format!(
                "--add: '{}' is larger than 1 GiB",
                host.display()
            )));
        }
        let data = fs::read(host).map_err(err)?;
        cpio.entry(guest, S_IFREG | perm, &data);
    } else {
        return Err(Error::DeviceSpec(format!(
            "--add: '{}' is not a regular file, directory or symlink",
            host.display()
        )));
    }
    Ok(())
}

/// A newc archive holding every `--add`, with the parent directories of
/// each guest path.
pub fn build_cpio(adds: &[AddSpec]) -> Result<Vec<u8>> {
    let mut cpio = Cpio {
        out: Vec::new(),
        ino: 0,
    };
    for a in adds {
        let mut parent = String::new();
        let comps: Vec<&str> = a.guest.split('/').filter(|c| !c.is_empty()).collect();
        for c in &comps[..comps.len().saturating_sub(1)] {
            parent.push('/');
            parent.push_str(c);
            cpio.entry(&parent, S_IFDIR | 0o755, &[]);
        }
        add_path(&mut cpio, &a.host, &a.guest)?;
    }
    Ok(cpio.finish())
}

/// The initrd `base` followed by the archive of `adds`, in an anonymous
/// in-memory file (nothing is written to disk; the base is never changed).
pub fn with_additions(base: &Path, adds: &[AddSpec]) -> Result<File> {
    let setup = |msg: String| Error::Setup { what: "--add", msg };
    let extra = build_cpio(adds)?;
    let mut src = crate::loader::open_regular("initrd", base)?;
    // SAFETY: a NUL-terminated name and no flags; the fd is owned below.
    let fd = unsafe { libc::memfd_create(c"splitvm-initrd".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(setup(std::io::Error::last_os_error().to_string()));
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let mut f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let n = std::io::copy(&mut src, &mut f).map_err(|e| setup(e.to_string()))?;
    let pad = (4 - n % 4) % 4;
    f.write_all(&[0u8; 3][..pad as usize])
        .and_then(|_| f.write_all(&extra))
        .and_then(|_| f.seek(SeekFrom::Start(0)).map(|_| ()))
        .map_err(|e| setup(e.to_string()))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(cpio: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut v = Vec::new();
        let mut off = 0;
        loop {
            assert_eq!(&cpio[off..off + 6], b"070701", "magic at {off}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&cpio[off + 6 + i * 8..off + 14 + i * 8]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let name_start = off + 110;
            let name =
                String::from_utf8(cpio[name_start..name_start + namesize - 1].to_vec()).unwrap();
            let data_start = (name_start + namesize + 3) & !3;
            let data = cpio[data_start..data_start + size].to_vec();
            off = (data_start + size + 3) & !3;
            if name == "TRAILER!!!" {
                assert_eq!(off, cpio.len());
                return v;
            }
            v.push((name, mode, data));
        }
    }

    #[test]
    fn added_file_lands_at_its_guest_path_with_parents_and_mode() {
        let dir = std::env::temp_dir().join(format!("splitvm-add-{}", std::process::id()));
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("sub/x.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(dir.join("sub/x.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        let spec = parse_add(&format!("{}:/opt/t", dir.display())).unwrap();
        let e = entries(&build_cpio(&[spec]).unwrap());
        let names: Vec<&str> = e.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["opt", "opt/t", "opt/t/sub", "opt/t/sub/x.sh"]);
        assert_eq!(e[3].1, S_IFREG | 0o755);
        assert_eq!(e[3].2, b"#!/bin/sh\necho hi\n");
        assert_eq!(e[0].1 & S_IFDIR, S_IFDIR);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn guest_path_defaults_to_the_file_name_at_the_root() {
        let spec = parse_add("Cargo.toml").unwrap();
        assert_eq!(spec.guest, "/Cargo.toml");
        assert_eq!(parse_add("a:/x/y/").unwrap().guest, "/x/y");
    }

    #[test]
    fn bad_add_specs_are_one_line_errors() {
        for s in [":/x", "a:rel", "a:/", "/no/such/path", "a:/x/../etc"] {
            let e = parse_add(s).unwrap_err().to_string();
            assert!(e.starts_with("bad --add"), "{s}: {e}");
        }
    }

    #[test]
    fn combined_initrd_keeps_the_base_and_aligns_the_addition() {
        let dir = std::env::temp_dir().join(format!("splitvm-add2-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("base"), b"12345").unwrap();
        fs::write(dir.join("f"), b"data").unwrap();
        let spec = parse_add(&format!("{}", dir.join("f").display())).unwrap();
        let mut f = with_additions(&dir.join("base"), &[spec]).unwrap();
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut all).unwrap();
        assert_eq!(&all[..5], b"12345");
        assert_eq!(&all[5..8], &[0, 0, 0]);
        assert_eq!(entries(&all[8..])[0].0, "f");
        fs::remove_dir_all(&dir).unwrap();
    }
}
