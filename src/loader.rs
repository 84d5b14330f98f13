//! Choosing a boot protocol and loading the guest.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use arch::layout::{self, BOOT_STACK_POINTER};
use arch::regs::EntryMode;
use arch::{acpi, linux, mptable, multiboot};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::cli::{self, KernelFormat};
use crate::config::BootConfig;
use crate::error::{Error, Result};
use crate::vcpu::BootState;

/// What the loader found, for the report and for platform setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Multiboot,
    Linux,
    Raw,
}

/// Open `path` for reading if it is a regular file. The open does not
/// block (a FIFO or a device would otherwise hang here or be read forever).
pub fn open_regular(what: &'static str, path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |err| Error::File {
        what,
        path: path.to_path_buf(),
        err,
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(err)?;
    let meta = f.metadata().map_err(err)?;
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            libc::EISDIR
        } else {
            libc::EINVAL
        };
        let e = std::io::Error::from_raw_os_error(kind);
        return Err(if kind == libc::EISDIR {
            err(e)
        } else {
            Error::NotRegular {
                what,
                path: path.to_path_buf(),
            }
        });
    }
    Ok(f)
}

/// The whole of an opened file, refusing more than `max` bytes before
/// reading any of it.
fn read_all(what: &'static str, path: &Path, f: &mut File, max: u64) -> Result<Vec<u8>> {
    let err = |err| Error::File {
        what,
        path: path.to_path_buf(),
        err,
    };
    let len = f.metadata().map_err(err)?.len();
    if len > max {
        return Err(Error::TooLarge {
            what,
            path: path.to_path_buf(),
            size: len,
            max,
        });
    }
    let mut v = Vec::with_capacity(len as usize);
    f.take(max).read_to_end(&mut v).map_err(err)?;
    Ok(v)
}

fn read_file(what: &'static str, path: &Path, max: u64) -> Result<Vec<u8>> {
    let mut f = open_regular(what, path)?;
    read_all(what, path, &mut f, max)
}

/// Up to `len` bytes from the start of `path`.
fn read_head(path: &Path, len: usize) -> Result<Vec<u8>> {
    let f = open_regular("kernel", path)?;
    let mut v = Vec::with_capacity(len);
    f.take(len as u64)
        .read_to_end(&mut v)
        .map_err(|err| Error::File {
            what: "kernel",
            path: path.to_path_buf(),
            err,
        })?;
    Ok(v)
}

fn is_elf(b: &[u8]) -> bool {
    b.starts_with(b"\x7fELF")
}

fn is_bzimage(b: &[u8]) -> bool {
    b.get(0x202..0x206) == Some(b"HdrS")
}

/// The I/O APIC's ID in the MP table: the first ID after the CPUs' APIC IDs.
pub fn ioapic_mp_id(cpus: u32) -> u8 {
    cpus.min(254) as u8
}

/// The multiboot command line for `kernel` and `--cmdline`: the kernel path
/// as given, a space, then the command line (QEMU's `"%s %s"`).
pub fn multiboot_cmdline(kernel: &Path, cmdline: &str) -> String {
    format!("{} {}", kernel.display(), cmdline)
}

/// Decide the format of `image` for `--kernel-format auto`.
pub fn detect(image: &[u8]) -> Option<KernelFormat> {
    if multiboot::is_multiboot(image) {
        Some(KernelFormat::Multiboot)
    } else if is_elf(image) {
        Some(KernelFormat::Elf)
    } else if is_bzimage(image) {
        Some(KernelFormat::Bzimage)
    } else {
        None
    }
}

/// The kernel format `args` asks for, detected from the file's head for
/// `--kernel-format auto`.
pub fn format_of(args: &BootConfig) -> Result<KernelFormat> {
    let head = read_head(&args.kernel, multiboot::SEARCH_LEN)?;
    match args.format {
        KernelFormat::Auto => {
            detect(&head).ok_or_else(|| Error::UnknownFormat(args.kernel.clone()))
        }
        f => Ok(f),
    }
}

/// Load the guest `args` names, for `cpus` vCPUs, with `initrd` (already opened: the
/// `--initrd` file, or it with `--add` archives appended); returns the boot
/// vCPU state.
pub fn load(
    args: &BootConfig,
    cpus: u32,
    initrd: Option<&mut File>,
    cmdline: &str,
    mem: &GuestMemoryMmap,
    mem_size: u64,
    acpi: Option<&acpi::AcpiConfig>,
) -> Result<(BootState, Protocol)> {
    // `format` was detected from the first 8 KiB (format_of): a Linux
    // kernel is then streamed into guest memory by linux-loader, never read
    // whole into our own heap (that cost ~25 ms and 18 MiB of page faults
    // per start).
    let load_err = |msg: String| Error::Load {
        path: args.kernel.clone(),
        msg,
    };
    let below_4g = mem_size.min(layout::MMIO_HOLE_START);
    let above_4g = mem_size - below_4g;
    match args.format {
        KernelFormat::Multiboot => {
            let image = read_file("kernel", &args.kernel, below_4g)?;
            let loaded = multiboot::load(mem, &image).map_err(|e| load_err(e.to_string()))?;
            let initrd = match (initrd, &args.initrd) {
                (Some(f), Some(p)) => Some(read_all("initrd", p, f, below_4g)?),
                _ => None,
            };
            let module_addr = (loaded.end + 0xfff) & !0xfff;
            // The multiboot command line starts with the image's name, as
            // QEMU and GRUB write it ("%s %s"): kvm-unit-tests and other
            // multiboot programs take the first word as argv[0].
            let mb_cmdline = multiboot_cmdline(&args.kernel, cmdline);
            let ebx = multiboot::write_info(
                mem,
                below_4g,
                above_4g,
                &mb_cmdline,
                initrd.as_deref().map(|d| (d, module_addr)),
            )
            .map_err(|e| load_err(e.to_string()))?;
            Ok((
                BootState {
                    entry: loaded.entry,
                    mode: EntryMode::Protected32,
                    rsi: 0,
                    rax: multiboot::BOOTLOADER_MAGIC as u64,
                    rbx: ebx,
                    rsp: 0,
                },
                Protocol::Multiboot,
            ))
        }
        KernelFormat::Raw => {
            let entry = args.entry.ok_or(Error::RawNeedsEntry)?;
            let image = read_file("kernel", &args.kernel, below_4g)?;
            let end = args
                .load_addr
                .checked_add(image.len() as u64)
                .filter(|e| *e <= below_4g && args.load_addr >= 0x1000)
                .ok_or_else(|| {
                    load_err(format!(
                        "{} bytes at {:#x} do not fit in guest RAM",
                        image.len(),
                        args.load_addr
                    ))
                })?;
            mem.write_slice(&image, GuestAddress(args.load_addr))
                .map_err(|e| load_err(e.to_string()))?;
            let _ = end;
            let mode = match args.entry_mode {
                cli::EntryMode::Long => EntryMode::Long64,
                cli::EntryMode::Protected => EntryMode::Protected32,
            };
            Ok((
                BootState {
                    entry,
                    mode,
                    rsi: 0,
                    rax: 0,
                    rbx: 0,
                    rsp: BOOT_STACK_POINTER,
                },
                Protocol::Raw,
            ))
        }
        KernelFormat::Elf | KernelFormat::Bzimage => {
            let mut kernel = open_regular("kernel", &args.kernel)?;
            let boot = linux::load_linux(mem, &mut kernel, initrd, cmdline, args.pvh)
                .map_err(|e| load_err(e.to_string()))?;
            // The MP table and the ACPI tables describe the same machine:
            // every CPU, the userspace I/O APIC (ISA IRQ 0 on pin 2, IRQ n on
            // pin n); ACPI adds the PCI host bridge, the devices and power-off.
            if args.mptable {
                match u8::try_from(cpus) {
                    Ok(n) if n <= mptable::MAX_CPUS => {
                        mptable::setup_mptable(mem, n, ioapic_mp_id(cpus))
                            .map_err(|e| load_err(format!("MP table: {e}")))?;
                    }
                    // Only ACPI can name more (local x2APIC entries).
                    _ if acpi.is_some() => log::info!(
                        "{} vCPUs: no MP table (it names at most {}); the ACPI MADT describes them",
                        cpus,
                        mptable::MAX_CPUS
                    ),
                    _ => {
                        return Err(load_err(format!(
                        "{} vCPUs need ACPI tables: the MP table names at most {} (drop --no-acpi)",
                        cpus,
                        mptable::MAX_CPUS
                    )))
                    }
                }
            }
            if let Some(cfg) = acpi {
                let rsdp = acpi::setup_acpi(mem, cfg)
                    .map_err(|e| load_err(format!("ACPI tables: {e}")))?;
                linux::set_rsdp(mem, &boot, rsdp)
                    .map_err(|e| load_err(format!("ACPI RSDP: {e}")))?;
            }
            Ok((
                BootState {
                    entry: boot.entry,
                    mode: boot.mode,
                    rsi: boot.rsi,
                    rax: 0,
                    rbx: boot.rbx,
                    rsp: 0,
                },
                Protocol::Linux,
            ))
        }
        KernelFormat::Auto => Err(Error::UnknownFormat(args.kernel.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiboot_cmdline_is_the_image_path_then_the_command_line() {
        assert_eq!(
            multiboot_cmdline(Path::new("x86/vmexit.flat"), "ipi"),
            "x86/vmexit.flat ipi"
        );
        assert_eq!(multiboot_cmdline(Path::new("/k.elf"), ""), "/k.elf ");
    }

    #[test]
    fn detect_recognises_elf_bzimage_and_garbage() {
        let mut elf = b"\x7fELF".to_vec();
        elf.resize(64, 0);
        assert_eq!(detect(&elf), Some(KernelFormat::Elf));
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect(&bz), Some(KernelFormat::Bzimage));
        assert_eq!(detect(b"hello"), None);
    }
}
