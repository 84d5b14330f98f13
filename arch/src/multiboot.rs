//! Multiboot v1 loading (the format kvm-unit-tests and the micro-guests use).
//!
//! The image is an ELF32 or ELF64 file with a multiboot header in its first
//! 8 KiB (PT_LOAD segments are copied to their physical addresses), or any
//! file whose header sets flag 16 (the "a.out kludge": load addresses in the
//! header). The boot vCPU starts in 32-bit protected mode with paging off,
//! EAX = 0x2BADB002 and EBX = the information structure.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::layout::{
    CMDLINE_ADDR, CMDLINE_MAX_SIZE, EBDA_END, HIGH_MEMORY_START, MB_MODS_ADDR, ZERO_PAGE_ADDR,
};

pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// The multiboot header must lie in the first 8 KiB of the image.
pub const SEARCH_LEN: usize = 8192;
const FLAG_AOUT_KLUDGE: u32 = 1 << 16;

const INFO_MEM: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MODS: u32 = 1 << 3;
const INFO_MMAP: u32 = 1 << 6;
const INFO_LOADER_NAME: u32 = 1 << 9;

#[derive(Debug, thiserror::Error)]
pub enum MultibootError {
    #[error("no multiboot header in the first 8 KiB")]
    NoHeader,
    #[error("multiboot header checksum is wrong")]
    BadChecksum,
    #[error("multiboot a.out kludge (flag 16): {0}")]
    BadAoutKludge(String),
    #[error("image is neither ELF nor a multiboot image with load addresses (flag 16)")]
    NotLoadable,
    #[error("malformed ELF: {0}")]
    BadElf(&'static str),
    #[error("segment at {addr:#x} (+{len:#x}) does not fit in guest RAM")]
    DoesNotFit { addr: u64, len: u64 },
    #[error("command line is longer than {0} bytes")]
    CmdlineTooLong(usize),
    #[error("module of {0} bytes does not fit in guest RAM")]
    ModuleTooBig(u64),
}

/// Where the image landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    pub entry: u64,
    /// First byte above everything loaded (modules go after it).
    pub end: u64,
}

/// Find the multiboot header: returns (offset in file, flags).
pub fn find_header(image: &[u8]) -> Option<(usize, u32)> {
    let limit = image.len().min(SEARCH_LEN);
    (0..limit.saturating_sub(11)).step_by(4).find_map(|off| {
        let w = |i: usize| u32::from_le_bytes(image[off + i..off + i + 4].try_into().unwrap());
        (w(0) == HEADER_MAGIC).then(|| (off, w(4)))
    })
}

/// True if `image` carries a multiboot v1 header.
pub fn is_multiboot(image: &[u8]) -> bool {
    find_header(image).is_some()
}

fn rd32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn rd16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn rd64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

fn check_fits(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Result<(), MultibootError> {
    let end = addr
        .checked_add(len)
        .ok_or(MultibootError::DoesNotFit { addr, len })?;
    if len == 0 {
        return Ok(());
    }
    if addr < HIGH_MEMORY_START.min(0x1000)
        || !mem.address_in_range(GuestAddress(addr))
        || !mem.address_in_range(GuestAddress(end - 1))
    {
        return Err(MultibootError::DoesNotFit { addr, len });
    }
    Ok(())
}

fn write_segment(
    mem: &GuestMemoryMmap,
    addr: u64,
    data: &[u8],
    memsz: u64,
) -> Result<(), MultibootError> {
    check_fits(mem, addr, memsz.max(data.len() as u64))?;
    let fit = |_| MultibootError::DoesNotFit { addr, len: memsz };
    mem.write_slice(data, GuestAddress(addr)).map_err(fit)?;
    if memsz > data.len() as u64 {
        let zeros = vec![0u8; (memsz - data.len() as u64) as usize];
        mem.write_slice(&zeros, GuestAddress(addr + data.len() as u64))
            .map_err(fit)?;
    }
    Ok(())
}

/// Load a multiboot image into guest memory.
pub fn load(mem: &GuestMemoryMmap, image: &[u8]) -> Result<Loaded, MultibootError> {
    let (hoff, flags) = find_header(image).ok_or(MultibootError::NoHeader)?;
    let checksum = rd32(image, hoff + 8).ok_or(MultibootError::NoHeader)?;
    if HEADER_MAGIC.wrapping_add(flags).wrapping_add(checksum) != 0 {
        return Err(MultibootError::BadChecksum);
    }
    if image.starts_with(b"\x7fELF") {
        return load_elf(mem, image);
    }
    if flags & FLAG_AOUT_KLUDGE == 0 {
        return Err(MultibootError::NotLoadable);
    }
    let f = |i| rd32(image, hoff + i).ok_or(MultibootError::NotLoadable);
    let (header_addr, load_addr, load_end, bss_end, entry) =
        (f(12)?, f(16)?, f(20)?, f(24)?, f(28)?);
    // The header's place in the file and in memory fix where the image
    // starts: file_start = header offset - (header_addr - load_addr).
    let bad = |why: String| MultibootError::BadAoutKludge(why);
    let before_header = header_addr.checked_sub(load_addr).ok_or_else(|| {
        bad(format!(
            "load_addr {load_addr:#x} is above header_addr {header_addr:#x}"
        ))
    })?;
    let file_start = hoff.checked_sub(before_header as usize).ok_or_else(|| {
        bad(format!(
            "header_addr - load_addr ({before_header:#x}) is more than the header's offset in the file ({hoff:#x})"
        ))
    })?;
    let len = if load_end == 0 {
        image.len() - file_start
    } else {
        load_end.checked_sub(load_addr).ok_or_else(|| {
            bad(format!(
                "load_end {load_end:#x} is below load_addr {load_addr:#x}"
            ))
        })? as usize
    };
    let data = file_start
        .checked_add(len)
        .and_then(|end| image.get(file_start..end))
        .ok_or_else(|| {
            bad(format!(
                "{len:#x} bytes from file offset {file_start:#x} are past the end of the file"
            ))
        })?;
    let memsz = if bss_end > load_addr {
        (bss_end - load_addr) as u64
    } else {
        len as u64
    };
    write_segment(mem, load_addr as u64, data, memsz)?;
    Ok(Loaded {
        entry: entry as u64,
        end: load_addr as u64 + memsz,
    })
}

fn load_elf(mem: &GuestMemoryMmap, img: &[u8]) -> Result<Loaded, MultibootError> {
    let bad = MultibootError::BadElf;
    let class64 = match img.get(4) {
        Some(1) => false,
        Some(2) => true,
        _ => return Err(bad("unknown class")),
    };
    if img.get(5) != Some(&1) {
        return Err(bad("not little-endian"));
    }
    let (entry, phoff, phentsize, phnum) = if class64 {
        (
            rd64(img, 24).ok_or(bad("short header"))?,
            rd64(img, 32).ok_or(bad("short header"))?,
            rd16(img, 54).ok_or(bad("short header"))?,
            rd16(img, 56).ok_or(bad("short header"))?,
        )
    } else {
        (
            rd32(img, 24).ok_or(bad("short header"))? as u64,
            rd32(img, 28).ok_or(bad("short header"))? as u64,
            rd16(img, 42).ok_or(bad("short header"))?,
            rd16(img, 44).ok_or(bad("short header"))?,
        )
    };
    let mut end = 0u64;
    let mut loaded_any = false;
    for i in 0..phnum as u64 {
        let ph = usize::try_from(phoff + i * phentsize as u64)
            .map_err(|_| bad("program header offset"))?;
        let (ptype, offset, paddr, filesz, memsz) = if class64 {
            (
                rd32(img, ph),
                rd64(img, ph + 8),
                rd64(img, ph + 24),
                rd64(img, ph + 32),
                rd64(img, ph + 40),
            )
        } else {
            (
                rd32(img, ph),
                rd32(img, ph + 4).map(u64::from),
                rd32(img, ph + 12).map(u64::from),
                rd32(img, ph + 16).map(u64::from),
                rd32(img, ph + 20).map(u64::from),
            )
        };
        let (ptype, offset, paddr, filesz, memsz) = match (ptype, offset, paddr, filesz, memsz) {
            (Some(a), Some(b), Some(c), Some(d), Some(e)) => (a, b, c, d, e),
            _ => return Err(bad("truncated program header")),
        };
        if ptype != 1 {
            continue; // PT_LOAD only
        }
        let start = usize::try_from(offset).map_err(|_| bad("segment offset"))?;
        let stop = start
            .checked_add(usize::try_from(filesz).map_err(|_| bad("segment size"))?)
            .ok_or(bad("segment size"))?;
        let data = img
            .get(start..stop)
            .ok_or(bad("segment past end of file"))?;
        write_segment(mem, paddr, data, memsz)?;
        end = end.max(paddr + memsz);
        loaded_any = true;
    }
    if !loaded_any {
        return Err(bad("no PT_LOAD segment"));
    }
    Ok(Loaded { entry, end })
}

/// Write the multiboot information structure (and command line, module)
/// and return its guest address for EBX. `ram_below_4g` is the size of RAM
/// starting at 0; `ram_above_4g` any RAM at 4 GiB.
pub fn write_info(
    mem: &GuestMemoryMmap,
    ram_below_4g: u64,
    ram_above_4g: u64,
    cmdline: &str,
    module: Option<(&[u8], u64)>,
) -> Result<u64, MultibootError> {
    let fit = |_| MultibootError::DoesNotFit {
        addr: ZERO_PAGE_ADDR,
        len: 0x1000,
    };
    if cmdline.len() + 1 > CMDLINE_MAX_SIZE {
        return Err(MultibootError::CmdlineTooLong(CMDLINE_MAX_SIZE - 1));
    }
    let mut info = [0u32; 22];
    info[0] = INFO_MEM | INFO_CMDLINE | INFO_MMAP | INFO_LOADER_NAME;
    info[1] = (EBDA_END / 1024) as u32; // mem_lower in KiB
    info[2] = ((ram_below_4g.saturating_sub(HIGH_MEMORY_START)) / 1024).min(u32::MAX as u64) as u32;
    let mut c = cmdline.as_bytes().to_vec();
    c.push(0);
    mem.write_slice(&c, GuestAddress(CMDLINE_ADDR))
        .map_err(fit)?;
    info[4] = CMDLINE_ADDR as u32;

    // Module list and strings live at MB_MODS_ADDR.
    let name_addr = MB_MODS_ADDR + 0x100;
    mem.write_slice(b"splitvm\0", GuestAddress(name_addr))
        .map_err(fit)?;
    info[16] = name_addr as u32; // boot_loader_name
    if let Some((data, addr)) = module {
        let len = data.len() as u64;
        if !mem.address_in_range(GuestAddress(addr)) || addr + len > ram_below_4g {
            return Err(MultibootError::ModuleTooBig(len));
        }
        mem.write_slice(data, GuestAddress(addr))
            .map_err(|_| MultibootError::ModuleTooBig(len))?;
        let m = [addr as u32, (addr + len) as u32, name_addr as u32, 0];
        for (i, v) in m.iter().enumerate() {
            mem.write_obj(*v, GuestAddress(MB_MODS_ADDR + 4 * i as u64))
                .map_err(fit)?;
        }
        info[0] |= INFO_MODS;
        info[5] = 1;
        info[6] = MB_MODS_ADDR as u32;
    }

    // Memory map: size(4) base(8) len(8) type(4), size excludes itself.
    let mut map = Vec::new();
    let mut entry = |base: u64, len: u64, ty: u32| {
        map.extend_from_slice(&20u32.to_le_bytes());
        map.extend_from_slice(&base.to_le_bytes());
        map.extend_from_slice(&len.to_le_bytes());
        map.extend_from_slice(&ty.to_le_bytes());
    };
    entry(0, EBDA_END, 1);
    entry(EBDA_END, HIGH_MEMORY_START - EBDA_END, 2);
    entry(HIGH_MEMORY_START, ram_below_4g - HIGH_MEMORY_START, 1);
    if ram_above_4g > 0 {
        entry(crate::layout::MMIO_HOLE_END, ram_above_4g, 1);
    }
    let map_addr = MB_MODS_ADDR + 0x200;
    mem.write_slice(&map, GuestAddress(map_addr)).map_err(fit)?;
    info[11] = map.len() as u32;
    info[12] = map_addr as u32;

    for (i, v) in info.iter().enumerate() {
        mem.write_obj(*v, GuestAddress(ZERO_PAGE_ADDR + 4 * i as u64))
            .map_err(fit)?;
    }
    Ok(ZERO_PAGE_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    fn header(flags: u32, extra: &[u32]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [
            HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(HEADER_MAGIC.wrapping_add(flags)),
        ] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        for w in extra {
            v.extend_from_slice(&w.to_le_bytes());
        }
        v
    }

    #[test]
    fn aout_kludge_image_loads_at_header_addresses() {
        // header_addr, load_addr, load_end (0 = whole file), bss_end, entry
        let mut img = header(
            FLAG_AOUT_KLUDGE,
            &[0x10_0000, 0x10_0000, 0, 0x10_1000, 0x10_0020],
        );
        img.extend_from_slice(&[0x90; 8]);
        let l = load(&mem(), &img).unwrap();
        assert_eq!(l.entry, 0x10_0020);
        assert_eq!(l.end, 0x10_1000);
        let b: u8 = mem().read_obj(GuestAddress(0x10_0000)).unwrap_or(0);
        let _ = b;
    }

    #[test]
    fn aout_kludge_with_header_addr_past_the_file_start_is_a_clear_error() {
        // The header sits at offset 0 but claims 0x100 bytes of image before
        // it: that used to underflow (a debug-build panic, a misleading
        // message in release).
        let img = header(FLAG_AOUT_KLUDGE, &[0x10_0100, 0x10_0000, 0, 0, 0x10_0000]);
        let e = load(&mem(), &img).unwrap_err();
        assert!(matches!(e, MultibootError::BadAoutKludge(_)), "{e}");
        assert!(e.to_string().contains("flag 16"), "{e}");
        assert!(e.to_string().contains("header_addr - load_addr"), "{e}");
    }

    #[test]
    fn aout_kludge_with_huge_or_inverted_addresses_is_refused() {
        for extra in [
            [0x10_0000, 0x20_0000, 0, 0, 0], // load_addr above header_addr
            [0x10_0000, 0x10_0000, 0x0f_0000, 0, 0], // load_end below load_addr
            [0x10_0000, 0x10_0000, 0xffff_ffff, 0, 0], // past the end of the file
        ] {
            let img = header(FLAG_AOUT_KLUDGE, &extra);
            assert!(
                matches!(load(&mem(), &img), Err(MultibootError::BadAoutKludge(_))),
                "{extra:x?}"
            );
        }
    }

    /// Deterministic mutations of a valid a.out-kludge image and header
    /// fields set to random values: loading never panics.
    #[test]
    fn mutated_multiboot_headers_never_panic_the_loader() {
        let m = mem();
        let mut x = 0x9e37_79b9_u32;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let mut loaded = 0;
        for _ in 0..5000 {
            let prefix = (rnd() % 16) * 4;
            let fields: Vec<u32> = if rnd() % 4 == 0 {
                // Consistent: header_addr - load_addr = the header's offset.
                vec![0x10_0000 + prefix, 0x10_0000, 0, 0, 0x10_0000]
            } else {
                (0..5)
                    .map(|_| match rnd() % 3 {
                        0 => 0x10_0000 + (rnd() & 0xfff),
                        1 => rnd(),
                        _ => 0,
                    })
                    .collect()
            };
            let flags = if rnd() % 8 == 0 {
                rnd()
            } else {
                FLAG_AOUT_KLUDGE
            };
            let mut img = vec![0u8; prefix as usize];
            img.extend(header(flags, &fields));
            img.extend(std::iter::repeat_n(0x90, (rnd() % 256) as usize));
            if rnd() % 4 == 0 {
                let at = rnd() as usize % img.len();
                img[at] = rnd() as u8;
            }
            if load(&m, &img).is_ok() {
                loaded += 1;
            }
        }
        assert!(
            loaded > 0,
            "no mutation loaded: the generator is too hostile"
        );
    }

    #[test]
    fn image_without_header_is_refused() {
        assert!(matches!(
            load(&mem(), &[0u8; 64]),
            Err(MultibootError::NoHeader)
        ));
    }

    #[test]
    fn bad_checksum_is_refused() {
        let mut img = header(0, &[]);
        img[8] ^= 1;
        assert!(matches!(
            load(&mem(), &img),
            Err(MultibootError::BadChecksum)
        ));
    }

    #[test]
    fn truncated_elf_is_an_error_not_a_panic() {
        let mut img = b"\x7fELF\x01\x01\x01\0".to_vec();
        img.resize(64, 0);
        img.extend(header(0, &[]));
        img[28] = 0xff; // phoff far away
        img[44] = 3; // phnum
        assert!(load(&mem(), &img).is_err());
    }

    #[test]
    fn info_struct_reports_memory_and_cmdline() {
        let m = mem();
        let ebx = write_info(&m, 16 << 20, 0, "hello", None).unwrap();
        let flags: u32 = m.read_obj(GuestAddress(ebx)).unwrap();
        assert_ne!(flags & INFO_MEM, 0);
        let upper: u32 = m.read_obj(GuestAddress(ebx + 8)).unwrap();
        assert_eq!(upper, (15 << 20) / 1024);
        let cmd: u32 = m.read_obj(GuestAddress(ebx + 16)).unwrap();
        let mut s = [0u8; 6];
        m.read_slice(&mut s, GuestAddress(cmd as u64)).unwrap();
        assert_eq!(&s, b"hello\0");
    }
}
