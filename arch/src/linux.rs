//! Linux boot: ELF `vmlinux` and bzImage kernels, with an optional initrd.
//!
//! # Entry protocols
//!
//! * **64-bit Linux boot protocol** (the default, both formats): the vCPU
//!   starts in long mode with the identity map of the first 4 GiB
//!   ([`EntryMode::Long64`]), RSI = the `boot_params` zero page at
//!   [`ZERO_PAGE_ADDR`]. For an ELF `vmlinux` the entry is the ELF entry
//!   point (`startup_64`, a physical address); for a bzImage it is the
//!   decompressor's 64-bit entry, `load address + 0x200`.
//! * **PVH** (ELF only, when the image carries a `XEN_ELFNOTE_PHYS32_ENTRY`
//!   note and the caller asks for it): 32-bit protected mode, paging off
//!   ([`EntryMode::Protected32`]), EBX = an `hvm_start_info` at
//!   [`ZERO_PAGE_ADDR`] with a memory map, the command line and the initrd as
//!   module 0.
//!
//! Why the 64-bit protocol is the default: it works for every kernel we load
//! (bzImage has no PVH note; vmlinux without CONFIG_PVH has none either), it
//! hands the kernel `boot_params`, the structure it consumes natively (the
//! PVH entry only converts `hvm_start_info` into `boot_params` inside the
//! guest), and it skips the PVH 32-bit trampoline that builds page tables
//! and switches to long mode; on hosts where guest kernel code is emulated
//! every instruction the guest does not have to run counts. PVH stays
//! available for kernels or setups that want it.
//!
//! # Memory placement
//!
//! * zero page / `hvm_start_info` (+ module list at +0x40, memory map at
//!   +0x80): [`ZERO_PAGE_ADDR`];
//! * command line: [`CMDLINE_ADDR`], NUL-terminated; it must not be longer
//!   than the kernel accepts: `cmdline_size` from a bzImage setup header, or
//!   2047 bytes (x86 COMMAND_LINE_SIZE - 1) for a vmlinux, which has no
//!   setup header;
//! * kernel: ELF segments at their physical addresses (at least 1 MiB);
//!   a bzImage's protected-mode part at 1 MiB. The bzImage decompressor then
//!   runs the kernel at `max(align_up(load, kernel_alignment), pref_address)`
//!   for `init_size` bytes; that whole range counts as the kernel's;
//! * initrd: as high as possible, page-aligned, below
//!   `min(end of RAM below the MMIO hole, initrd_addr_max + 1)` and above
//!   the kernel. `initrd_addr_max` comes from the bzImage setup header; a
//!   vmlinux gets 0x7FFFFFFF, the value every x86-64 kernel's header
//!   declares.
//!
//! # e820 map
//!
//! From the guest memory regions: RAM `0..0x9FC00`, reserved `0x9FC00..1 MiB`
//! (MP table, legacy video/ROM area), RAM `1 MiB..` the end of RAM below the
//! MMIO hole, RAM above 4 GiB if any. The MMIO hole (0xC0000000..4 GiB) is
//! left out: Linux takes the largest gap below 4 GiB as the PCI window, so
//! it must not appear as RAM (nor as reserved, which would hide the gap).

use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::{self, boot_params, setup_header};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use linux_loader::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, ReadVolatile,
};

use crate::layout::{
    CMDLINE_ADDR, CMDLINE_MAX_SIZE, HIGH_MEMORY_START, MMIO_HOLE_END, MMIO_HOLE_START,
    MPTABLE_START, PCI_ECAM_SIZE, PCI_ECAM_START, ZERO_PAGE_ADDR,
};
use crate::regs::EntryMode;

/// "HdrS", the setup header magic at 0x202.
const HDRS_MAGIC: u32 = 0x5372_6448;
const SETUP_HEADER_OFFSET: usize = 0x1f1;
const SETUP_HEADER_END: usize = SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>();
/// The 64-bit entry point of a bzImage, from its load address.
pub const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Boot protocol 2.12 introduced xloadflags (XLF_KERNEL_64).
const MIN_BOOT_PROTOCOL: u16 = 0x020c;
/// x86 COMMAND_LINE_SIZE - 1: what a vmlinux accepts (no setup header).
pub const ELF_CMDLINE_MAX: usize = 2047;
/// initrd_addr_max of every x86-64 kernel (arch/x86/boot/header.S).
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
/// CONFIG_PHYSICAL_ALIGN default, reported for a vmlinux.
const ELF_KERNEL_ALIGNMENT: u32 = 0x0100_0000;
/// LOAD_PHYSICAL_ADDR default, for a bzImage that reports no pref_address.
const DEFAULT_PREF_ADDRESS: u64 = 0x0100_0000;
const BOOT_FLAG: u16 = 0xAA55;
const TYPE_OF_LOADER_UNDEFINED: u8 = 0xff;
const HEAP_END_PTR: u16 = 0xfe00;
const PAGE_SIZE: u64 = 4096;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const START_INFO_MODLIST_OFFSET: u64 = 0x40;
const START_INFO_MEMMAP_OFFSET: u64 = 0x80;

const ELF_HEADER_LEN: usize = 64;
const ELF_PHDR_LEN: usize = 56;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// Kernel image formats [`load_linux`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// ELF `vmlinux` (ELF64, x86-64).
    Elf,
    /// bzImage (boot protocol 2.12 or later with a 64-bit entry point).
    BzImage,
}

/// How to start the boot vCPU after [`load_linux`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinuxBoot {
    pub format: KernelFormat,
    /// RIP at entry.
    pub entry: u64,
    /// CPU mode at entry (feed to `regs::setup_sregs`).
    pub mode: EntryMode,
    /// RSI at entry: the zero page for the 64-bit protocol, 0 for PVH.
    pub rsi: u64,
    /// RBX at entry: the `hvm_start_info` for PVH, 0 for the 64-bit protocol.
    pub rbx: u64,
    /// Guest physical range the kernel occupies (for a bzImage including the
    /// area it decompresses into).
    pub kernel_start: u64,
    pub kernel_end: u64,
    /// Where the initrd went: (address, size).
    pub initrd: Option<(u64, u64)>,
}

/// One e820 / PVH memory map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    #[error("kernel image is neither an ELF vmlinux nor a bzImage")]
    UnknownFormat,
    #[error("kernel image is truncated ({0})")]
    Truncated(&'static str),
    #[error("unsupported ELF kernel: {0}")]
    UnsupportedElf(&'static str),
    #[error("unsupported bzImage: {0}")]
    UnsupportedBzImage(&'static str),
    #[error("bzImage boot protocol {version:#06x} has no 64-bit entry point (needs 2.12 and XLF_KERNEL_64)")]
    No64BitEntry { version: u16 },
    #[error(
        "kernel at {addr:#x} (+{len:#x}) does not fit in guest RAM between 1 MiB and {ram_end:#x}"
    )]
    KernelDoesNotFit { addr: u64, len: u64, ram_end: u64 },
    #[error("PVH boot requested but the kernel has no XEN_ELFNOTE_PHYS32_ENTRY note")]
    NoPvhEntry,
    #[error("command line is {len} bytes, the kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("command line contains a NUL byte")]
    CmdlineHasNul,
    #[error(
        "initrd of {size} bytes does not fit: {room} bytes free between the kernel and {limit:#x}"
    )]
    InitrdDoesNotFit { size: u64, room: u64, limit: u64 },
    #[error("kernel loader: {0}")]
    Loader(#[from] linux_loader::loader::Error),
    #[error("reading the image: {0}")]
    Io(#[from] std::io::Error),
    #[error("writing guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// Recognise a kernel image from its first bytes (at least 0x206 for a
/// bzImage). Multiboot kernels are ELF files too: callers that also accept
/// multiboot check `multiboot::is_multiboot` first.
pub fn detect_format(header: &[u8]) -> Option<KernelFormat> {
    if header.starts_with(b"\x7fELF") {
        Some(KernelFormat::Elf)
    } else if header.get(0x202..0x206) == Some(&HDRS_MAGIC.to_le_bytes()[..]) {
        Some(KernelFormat::BzImage)
    } else {
        None
    }
}

/// Load `kernel` (and `initrd`) into `mem`, write the command line and the
/// boot information, and say how to enter the kernel. `use_pvh` selects the
/// PVH entry of an ELF kernel instead of the 64-bit Linux boot protocol.
pub fn load_linux(
    mem: &GuestMemoryMmap,
    kernel: &mut std::fs::File,
    initrd: Option<&mut std::fs::File>,
    cmdline: &str,
    use_pvh: bool,
) -> Result<LinuxBoot, LinuxError> {
    load_linux_from(mem, kernel, initrd, cmdline, use_pvh)
}

/// [`load_linux`] for any seekable source (files, in-memory images).
pub fn load_linux_from<K, I>(
    mem: &GuestMemoryMmap,
    kernel: &mut K,
    initrd: Option<&mut I>,
    cmdline: &str,
    use_pvh: bool,
) -> Result<LinuxBoot, LinuxError>
where
    K: Read + ReadVolatile + Seek,
    I: Read + ReadVolatile + Seek,
{
    let ram = guest_ram(mem);
    let low_end = ram_end_below_hole(&ram);

    // Check what can be checked before writing to guest memory (only a
    // missing PVH note is found while loading).
    let file_len = kernel.seek(SeekFrom::End(0))?;
    let mut head = vec![0u8; file_len.min(SETUP_HEADER_END as u64) as usize];
    kernel.seek(SeekFrom::Start(0))?;
    kernel.read_exact(&mut head)?;
    let plan = match detect_format(&head).ok_or(LinuxError::UnknownFormat)? {
        KernelFormat::Elf => plan_elf(kernel, file_len, low_end)?,
        KernelFormat::BzImage => {
            if use_pvh {
                return Err(LinuxError::NoPvhEntry);
            }
            plan_bzimage(&head, file_len, low_end)?
        }
    };

    if cmdline.as_bytes().contains(&0) {
        return Err(LinuxError::CmdlineHasNul);
    }
    let cmdline_max = plan.cmdline_max.min(CMDLINE_MAX_SIZE - 1);
    if cmdline.len() > cmdline_max {
        return Err(LinuxError::CmdlineTooLong {
            len: cmdline.len(),
            max: cmdline_max,
        });
    }

    let mut initrd = initrd;
    let initrd_size = match initrd.as_mut() {
        Some(f) => Some(f.seek(SeekFrom::End(0))?),
        None => None,
    };
    let initrd_addr = initrd_size
        .filter(|&s| s > 0)
        .map(|size| place_initrd(size, plan.kernel_end, low_end, plan.initrd_addr_max))
        .transpose()?;

    // Load.
    let (entry, pvh_entry, header) = match plan.format {
        KernelFormat::Elf => {
            let r = Elf::load(mem, None, kernel, Some(GuestAddress(HIGH_MEMORY_START)))?;
            for &(addr, filesz, memsz) in &plan.segments {
                zero(mem, addr + filesz, memsz - filesz)?;
            }
            let pvh = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(a) => Some(a.0),
                _ => None,
            };
            (r.kernel_load.0, pvh, None)
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, Some(GuestAddress(HIGH_MEMORY_START)), kernel, None)?;
            (
                r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
                None,
                r.setup_header,
            )
        }
    };
    if use_pvh && pvh_entry.is_none() {
        return Err(LinuxError::NoPvhEntry);
    }
    // The 64-bit entry was checked against the segments in the plan; the
    // PVH note's entry (a 32-bit physical address) is only known now.
    if let Some(pvh) = pvh_entry.filter(|_| use_pvh) {
        if !plan
            .segments
            .iter()
            .any(|&(a, _, m)| pvh >= a && pvh < a + m)
        {
            return Err(LinuxError::UnsupportedElf(
                "PVH entry point outside the loaded segments",
            ));
        }
    }

    let initrd = match (initrd, initrd_addr, initrd_size) {
        (Some(f), Some(addr), Some(size)) => {
            f.seek(SeekFrom::Start(0))?;
            mem.read_exact_volatile_from(GuestAddress(addr), f, size as usize)?;
            Some((addr, size))
        }
        _ => None,
    };

    let mut c = cmdline.as_bytes().to_vec();
    c.push(0);
    mem.write_slice(&c, GuestAddress(CMDLINE_ADDR))?;

    let e820 = e820_map(&ram);
    mem.write_slice(&[0u8; PAGE_SIZE as usize], GuestAddress(ZERO_PAGE_ADDR))?;
    let boot = LinuxBoot {
        format: plan.format,
        entry,
        mode: EntryMode::Long64,
        rsi: ZERO_PAGE_ADDR,
        rbx: 0,
        kernel_start: plan.kernel_start,
        kernel_end: plan.kernel_end,
        initrd,
    };
    match pvh_entry.filter(|_| use_pvh) {
        Some(pvh) => {
            write_start_info(mem, &e820, initrd)?;
            Ok(LinuxBoot {
                entry: pvh,
                mode: EntryMode::Protected32,
                rsi: 0,
                rbx: ZERO_PAGE_ADDR,
                ..boot
            })
        }
        None => {
            let zp = zero_page(header, cmdline_max, initrd, &e820);
            mem.write_obj(zp, GuestAddress(ZERO_PAGE_ADDR))?;
            Ok(boot)
        }
    }
}

/// What was learned from the image before loading it.
struct Plan {
    format: KernelFormat,
    kernel_start: u64,
    kernel_end: u64,
    cmdline_max: usize,
    initrd_addr_max: u64,
    /// ELF PT_LOAD segments: (address, file size, memory size).
    segments: Vec<(u64, u64, u64)>,
}

fn rd16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn rd32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap_or([0; 4]))
}
fn rd64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap_or([0; 8]))
}

fn check_kernel_range(addr: u64, len: u64, low_end: u64) -> Result<u64, LinuxError> {
    let too_big = LinuxError::KernelDoesNotFit {
        addr,
        len,
        ram_end: low_end,
    };
    match addr.checked_add(len) {
        Some(end) if addr >= HIGH_MEMORY_START && end <= low_end => Ok(end),
        _ => Err(too_big),
    }
}

fn plan_elf<K: Read + Seek>(
    kernel: &mut K,
    file_len: u64,
    low_end: u64,
) -> Result<Plan, LinuxError> {
    if file_len < ELF_HEADER_LEN as u64 {
        return Err(LinuxError::Truncated("ELF header"));
    }
    let mut eh = [0u8; ELF_HEADER_LEN];
    kernel.seek(SeekFrom::Start(0))?;
    kernel.read_exact(&mut eh)?;
    if eh[4] != ELFCLASS64 {
        return Err(LinuxError::UnsupportedElf(
            "not ELF64 (a Linux/x86-64 vmlinux is)",
        ));
    }
    if eh[5] != ELFDATA2LSB {
        return Err(LinuxError::UnsupportedElf("not little-endian"));
    }
    if rd16(&eh, 18) != EM_X86_64 {
        return Err(LinuxError::UnsupportedElf("not an x86-64 image"));
    }
    let entry = rd64(&eh, 24);
    let phoff = rd64(&eh, 32);
    let phentsize = rd16(&eh, 54) as usize;
    let phnum = rd16(&eh, 56) as u64;
    if phentsize != ELF_PHDR_LEN {
        return Err(LinuxError::UnsupportedElf("program header size is not 56"));
    }
    if phoff < ELF_HEADER_LEN as u64 {
        return Err(LinuxError::UnsupportedElf(
            "program headers overlap the ELF header",
        ));
    }
    let ph_len = phnum * ELF_PHDR_LEN as u64;
    if phoff.checked_add(ph_len).is_none_or(|end| end > file_len) {
        return Err(LinuxError::Truncated("program headers"));
    }
    let mut ph = vec![0u8; ph_len as usize];
    kernel.seek(SeekFrom::Start(phoff))?;
    kernel.read_exact(&mut ph)?;

    let mut segments = Vec::new();
    let (mut start, mut end) = (u64::MAX, 0u64);
    for p in ph.chunks_exact(ELF_PHDR_LEN) {
        let (ptype, offset, paddr, filesz, memsz) = (
            rd32(p, 0),
            rd64(p, 8),
            rd64(p, 24),
            rd64(p, 32),
            rd64(p, 40),
        );
        // linux-loader copies PT_LOAD segments with file contents; all of
        // them, and memory-only ones, are zero-filled up to memsz here.
        if ptype != PT_LOAD || memsz == 0 {
            continue;
        }
        if offset.checked_add(filesz).is_none_or(|e| e > file_len) {
            return Err(LinuxError::Truncated("segment data"));
        }
        if filesz > memsz {
            return Err(LinuxError::UnsupportedElf(
                "segment file size exceeds its memory size",
            ));
        }
        let seg_end = check_kernel_range(paddr, memsz, low_end)?;
        start = start.min(paddr);
        end = end.max(seg_end);
        segments.push((paddr, filesz, memsz));
    }
    if segments.is_empty() {
        return Err(LinuxError::UnsupportedElf("no loadable segment"));
    }
    if !segments
        .iter()
        .any(|&(a, _, m)| entry >= a && entry < a + m)
    {
        return Err(LinuxError::UnsupportedElf(
            "entry point outside the loaded segments",
        ));
    }
    Ok(Plan {
        format: KernelFormat::Elf,
        kernel_start: start,
        kernel_end: end,
        cmdline_max: ELF_CMDLINE_MAX,
        initrd_addr_max: DEFAULT_INITRD_ADDR_MAX,
        segments,
    })
}

fn parse_setup_header(head: &[u8]) -> Option<setup_header> {
    let mut hdr = setup_header::default();
    let bytes = head.get(SETUP_HEADER_OFFSET..SETUP_HEADER_END)?;
    vm_memory::ByteValued::as_mut_slice(&mut hdr).copy_from_slice(bytes);
    Some(hdr)
}

fn plan_bzimage(head: &[u8], file_len: u64, low_end: u64) -> Result<Plan, LinuxError> {
    let hdr = parse_setup_header(head).ok_or(LinuxError::Truncated("setup header"))?;
    let (version, xloadflags, loadflags) = (hdr.version, hdr.xloadflags, hdr.loadflags);
    if version < MIN_BOOT_PROTOCOL || xloadflags & bootparam::XLF_KERNEL_64 == 0 {
        return Err(LinuxError::No64BitEntry { version });
    }
    if loadflags & bootparam::LOADED_HIGH == 0 {
        return Err(LinuxError::UnsupportedBzImage("zImage (not loaded high)"));
    }
    let setup_sects = match hdr.setup_sects {
        0 => 4,
        n => n as u64,
    };
    let setup_size = (setup_sects + 1) * 512;
    if file_len <= setup_size {
        return Err(LinuxError::Truncated("protected-mode kernel"));
    }
    let payload = file_len - setup_size;
    let load = HIGH_MEMORY_START;
    let align = hdr.kernel_alignment as u64;
    if hdr.relocatable_kernel != 0 && !align.is_power_of_two() {
        return Err(LinuxError::UnsupportedBzImage(
            "kernel_alignment is not a power of two",
        ));
    }
    let pref = match hdr.pref_address {
        0 => DEFAULT_PREF_ADDRESS,
        p => p,
    };
    // Where the decompressor puts the kernel (arch/x86/boot/compressed/head_64.S).
    let run = if hdr.relocatable_kernel != 0 {
        load.next_multiple_of(align).max(pref)
    } else {
        pref
    };
    let run_end = check_kernel_range(run, hdr.init_size as u64, low_end)?;
    let load_end = check_kernel_range(load, payload, low_end)?;
    let end = run_end.max(load_end);
    let cmdline_size = hdr.cmdline_size as usize;
    Ok(Plan {
        format: KernelFormat::BzImage,
        kernel_start: load,
        kernel_end: end,
        cmdline_max: cmdline_size,
        initrd_addr_max: hdr.initrd_addr_max as u64,
        segments: Vec::new(),
    })
}

/// Highest page-aligned address for `size` bytes below
/// `min(low_end, initrd_addr_max + 1)` and above the kernel.
fn place_initrd(
    size: u64,
    kernel_end: u64,
    low_end: u64,
    initrd_addr_max: u64,
) -> Result<u64, LinuxError> {
    let limit = low_end.min(initrd_addr_max.saturating_add(1));
    let floor = kernel_end.next_multiple_of(PAGE_SIZE);
    let room = limit.saturating_sub(floor);
    match limit.checked_sub(size) {
        Some(top) if top / PAGE_SIZE * PAGE_SIZE >= floor => Ok(top / PAGE_SIZE * PAGE_SIZE),
        _ => Err(LinuxError::InitrdDoesNotFit { size, room, limit }),
    }
}

fn zero(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Result<(), LinuxError> {
    const CHUNK: u64 = 1 << 16;
    let zeros = [0u8; CHUNK as usize];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(CHUNK);
        mem.write_slice(&zeros[..n as usize], GuestAddress(addr + off))?;
        off += n;
    }
    Ok(())
}

/// RAM ranges (start, length) of `mem`, adjacent regions merged.
pub fn guest_ram(mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
    let mut r: Vec<(u64, u64)> = mem
        .iter()
        .map(|reg| (reg.start_addr().0, reg.len()))
        .collect();
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, l) in r {
        match out.last_mut() {
            Some((ps, pl)) if *ps + *pl == s => *pl += l,
            _ => out.push((s, l)),
        }
    }
    out
}

/// End of the RAM that starts at 0, capped at the MMIO hole.
fn ram_end_below_hole(ram: &[(u64, u64)]) -> u64 {
    ram.iter()
        .find(|&&(s, _)| s == 0)
        .map_or(0, |&(_, l)| l.min(MMIO_HOLE_START))
}

/// The e820 map for guest RAM `ram` (start, length) as produced by
/// `layout::ram_regions`.
pub fn e820_map(ram: &[(u64, u64)]) -> Vec<E820Entry> {
    let mut out: Vec<E820Entry> = Vec::new();
    let mut add = |addr: u64, end: u64, kind: u32| {
        if end <= addr {
            return;
        }
        match out.last_mut() {
            Some(p) if p.kind == kind && p.addr + p.size == addr => p.size += end - addr,
            _ => out.push(E820Entry {
                addr,
                size: end - addr,
                kind,
            }),
        }
    };
    let mut ram: Vec<(u64, u64)> = ram.to_vec();
    ram.sort_unstable();
    for (start, len) in ram {
        let end = start + len;
        // Base memory below the MP table.
        add(start, end.min(MPTABLE_START), E820_RAM);
        // MP table and the legacy video/BIOS area.
        if start < HIGH_MEMORY_START && end > MPTABLE_START {
            add(start.max(MPTABLE_START), HIGH_MEMORY_START, E820_RESERVED);
        }
        // Extended memory below the hole; nothing inside the hole.
        add(
            start.max(HIGH_MEMORY_START),
            end.min(MMIO_HOLE_START),
            E820_RAM,
        );
        add(start.max(MMIO_HOLE_END), end, E820_RAM);
    }
    // The ECAM window is reserved (Linux accepts an MCFG window only if the
    // firmware reserved it); it sits in the MMIO hole, between the RAM below
    // and above it.
    let ecam = E820Entry {
        addr: PCI_ECAM_START,
        size: PCI_ECAM_SIZE,
        kind: E820_RESERVED,
    };
    let at = out.partition_point(|e| e.addr < ecam.addr);
    out.insert(at, ecam);
    out
}

/// Tell the kernel where the ACPI RSDP is: `acpi_rsdp_addr` in the zero page
/// (64-bit boot protocol) or `rsdp_paddr` in the PVH start info.
pub fn set_rsdp(mem: &GuestMemoryMmap, boot: &LinuxBoot, rsdp: u64) -> Result<(), LinuxError> {
    let offset = if boot.rbx != 0 {
        std::mem::offset_of!(hvm_start_info, rsdp_paddr)
    } else {
        std::mem::offset_of!(boot_params, acpi_rsdp_addr)
    };
    mem.write_obj(rsdp, GuestAddress(ZERO_PAGE_ADDR + offset as u64))?;
    Ok(())
}

fn zero_page(
    kernel_header: Option<setup_header>,
    cmdline_max: usize,
    initrd: Option<(u64, u64)>,
    e820: &[E820Entry],
) -> boot_params {
    let mut p = boot_params::default();
    match kernel_header {
        Some(h) => {
            // bzImage: the kernel's own header, with the loader's fields set.
            p.hdr = h;
            p.hdr.loadflags |= bootparam::CAN_USE_HEAP;
            p.hdr.heap_end_ptr = HEAP_END_PTR;
        }
        None => {
            // vmlinux: no header in the image; fill in what the kernel reads.
            p.hdr.kernel_alignment = ELF_KERNEL_ALIGNMENT;
            p.hdr.cmdline_size = cmdline_max as u32;
        }
    }
    p.hdr.boot_flag = BOOT_FLAG;
    p.hdr.header = HDRS_MAGIC;
    p.hdr.type_of_loader = TYPE_OF_LOADER_UNDEFINED;
    p.hdr.loadflags |= bootparam::LOADED_HIGH;
    p.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    p.ext_cmd_line_ptr = 0;
    if let Some((addr, size)) = initrd {
        p.hdr.ramdisk_image = addr as u32;
        p.hdr.ramdisk_size = size as u32;
    }
    let n = e820.len().min(p.e820_table.len());
    let mut table = p.e820_table;
    for (slot, e) in table.iter_mut().zip(e820) {
        *slot = bootparam::boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    p.e820_table = table;
    p.e820_entries = n as u8;
    p
}

fn write_start_info(
    mem: &GuestMemoryMmap,
    e820: &[E820Entry],
    initrd: Option<(u64, u64)>,
) -> Result<(), LinuxError> {
    let modlist = ZERO_PAGE_ADDR + START_INFO_MODLIST_OFFSET;
    let memmap = ZERO_PAGE_ADDR + START_INFO_MEMMAP_OFFSET;
    let entry_len = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    for (i, e) in e820.iter().enumerate() {
        let m = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        mem.write_obj(m, GuestAddress(memmap + i as u64 * entry_len))?;
    }
    if let Some((paddr, size)) = initrd {
        let m = hvm_modlist_entry {
            paddr,
            size,
            cmdline_paddr: 0,
            reserved: 0,
        };
        mem.write_obj(m, GuestAddress(modlist))?;
    }
    let si = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1, // 1 = has the memory map fields
        flags: 0,
        nr_modules: initrd.is_some() as u32,
        modlist_paddr: if initrd.is_some() { modlist } else { 0 },
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: 0,
        memmap_paddr: memmap,
        memmap_entries: e820.len() as u32,
        reserved: 0,
    };
    mem.write_obj(si, GuestAddress(ZERO_PAGE_ADDR))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::ram_regions;
    use std::io::Cursor;
    use vm_memory::ByteValued;

    const MIB: u64 = 1 << 20;
    const ELF_ENTRY: u64 = 0x100_0000;
    const PVH_ENTRY: u32 = 0x100_0040;

    fn mem(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    /// A minimal ELF64 x86-64 executable: one PT_LOAD per (paddr, data,
    /// memsz), and a PT_NOTE with a Xen PHYS32_ENTRY note if `pvh`.
    fn elf(segs: &[(u64, Vec<u8>, u64)], entry: u64, pvh: Option<u32>) -> Vec<u8> {
        let nph = segs.len() + pvh.is_some() as usize;
        let mut data_off = ELF_HEADER_LEN + nph * ELF_PHDR_LEN;
        let mut img = vec![0u8; data_off];
        img[0..4].copy_from_slice(b"\x7fELF");
        img[4] = ELFCLASS64;
        img[5] = ELFDATA2LSB;
        img[6] = 1;
        img[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        img[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        img[20..24].copy_from_slice(&1u32.to_le_bytes());
        img[24..32].copy_from_slice(&entry.to_le_bytes());
        img[32..40].copy_from_slice(&(ELF_HEADER_LEN as u64).to_le_bytes());
        img[52..54].copy_from_slice(&(ELF_HEADER_LEN as u16).to_le_bytes());
        img[54..56].copy_from_slice(&(ELF_PHDR_LEN as u16).to_le_bytes());
        img[56..58].copy_from_slice(&(nph as u16).to_le_bytes());
        let mut phdr = |i: usize, ptype: u32, off: usize, paddr: u64, filesz: u64, memsz: u64| {
            let p = ELF_HEADER_LEN + i * ELF_PHDR_LEN;
            img[p..p + 4].copy_from_slice(&ptype.to_le_bytes());
            img[p + 8..p + 16].copy_from_slice(&(off as u64).to_le_bytes());
            img[p + 16..p + 24].copy_from_slice(&paddr.to_le_bytes());
            img[p + 24..p + 32].copy_from_slice(&paddr.to_le_bytes());
            img[p + 32..p + 40].copy_from_slice(&filesz.to_le_bytes());
            img[p + 40..p + 48].copy_from_slice(&memsz.to_le_bytes());
        };
        let mut payload = Vec::new();
        for (i, (paddr, data, memsz)) in segs.iter().enumerate() {
            phdr(i, PT_LOAD, data_off, *paddr, data.len() as u64, *memsz);
            payload.extend_from_slice(data);
            data_off += data.len();
        }
        if let Some(e) = pvh {
            let mut note = Vec::new();
            note.extend_from_slice(&4u32.to_le_bytes()); // namesz
            note.extend_from_slice(&4u32.to_le_bytes()); // descsz
            note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
            note.extend_from_slice(b"Xen\0");
            note.extend_from_slice(&e.to_le_bytes());
            phdr(
                segs.len(),
                4,
                data_off,
                0,
                note.len() as u64,
                note.len() as u64,
            );
            payload.extend_from_slice(&note);
        }
        img.extend_from_slice(&payload);
        img
    }

    fn simple_elf(pvh: bool) -> Vec<u8> {
        let code = (0..64u8).collect::<Vec<_>>();
        elf(
            &[(ELF_ENTRY, code, 0x2000)],
            ELF_ENTRY,
            pvh.then_some(PVH_ENTRY),
        )
    }

    fn bz_header() -> setup_header {
        setup_header {
            setup_sects: 1,
            boot_flag: BOOT_FLAG,
            header: HDRS_MAGIC,
            version: 0x020f,
            loadflags: bootparam::LOADED_HIGH,
            code32_start: 0x10_0000,
            initrd_addr_max: 0x7fff_ffff,
            kernel_alignment: 0x20_0000,
            relocatable_kernel: 1,
            xloadflags: bootparam::XLF_KERNEL_64 | bootparam::XLF_CAN_BE_LOADED_ABOVE_4G,
            cmdline_size: 2047,
            pref_address: 0x100_0000,
            init_size: 0x80_0000,
            ..Default::default()
        }
    }

    /// A fake bzImage: boot sector + one setup sector, then `payload` bytes.
    fn bzimage(hdr: setup_header, payload: usize) -> Vec<u8> {
        let setup = (hdr.setup_sects as usize + 1) * 512;
        let mut img = vec![0u8; setup + payload];
        img[SETUP_HEADER_OFFSET..SETUP_HEADER_END].copy_from_slice(hdr.as_slice());
        for (i, b) in img[setup..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        img
    }

    fn load(
        m: &GuestMemoryMmap,
        kernel: &[u8],
        initrd: Option<&[u8]>,
        cmdline: &str,
        pvh: bool,
    ) -> Result<LinuxBoot, LinuxError> {
        let mut k = Cursor::new(kernel.to_vec());
        let mut i = initrd.map(|d| Cursor::new(d.to_vec()));
        load_linux_from(m, &mut k, i.as_mut(), cmdline, pvh)
    }

    fn zero_page_of(m: &GuestMemoryMmap) -> boot_params {
        m.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap()
    }

    fn e820_of(p: &boot_params) -> Vec<E820Entry> {
        let t = p.e820_table;
        t[..p.e820_entries as usize]
            .iter()
            .map(|e| E820Entry {
                addr: e.addr,
                size: e.size,
                kind: e.r#type,
            })
            .collect()
    }

    fn e(addr: u64, end: u64, kind: u32) -> E820Entry {
        E820Entry {
            addr,
            size: end - addr,
            kind,
        }
    }

    /// Deterministic mutations of valid ELF and bzImage kernels (a few
    /// bytes of the headers flipped, set to extremes, or the file cut):
    /// loading returns Ok or an error, never panics.
    #[test]
    fn mutated_elf_and_bzimage_headers_never_panic_the_loader() {
        let m = mem(64 * MIB);
        let mut x = 0x2545_f491_u32;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let bases = [
            simple_elf(false),
            simple_elf(true),
            bzimage(bz_header(), 4096),
        ];
        let mut loaded = 0;
        for i in 0..3000 {
            let mut img = bases[i % bases.len()].clone();
            let header_len = img.len().min(0x300);
            for _ in 0..1 + rnd() % 6 {
                let at = rnd() as usize % header_len;
                img[at] = match rnd() % 4 {
                    0 => 0,
                    1 => 0xff,
                    2 => img[at] ^ (1 << (rnd() % 8)),
                    _ => rnd() as u8,
                };
            }
            if rnd() % 8 == 0 {
                let cut = rnd() as usize % img.len();
                img.truncate(cut);
            }
            if load(&m, &img, Some(b"initrd"), "console=ttyS0", rnd() % 4 == 0).is_ok() {
                loaded += 1;
            }
        }
        // Some mutations leave a loadable kernel, most do not: both paths ran.
        assert!(loaded > 0 && loaded < 3000, "{loaded} of 3000 loaded");
    }

    #[test]
    fn detect_format_recognises_elf_and_bzimage_and_nothing_else() {
        assert_eq!(detect_format(&simple_elf(false)), Some(KernelFormat::Elf));
        assert_eq!(
            detect_format(&bzimage(bz_header(), 16)),
            Some(KernelFormat::BzImage)
        );
        assert_eq!(detect_format(&[0u8; 1024]), None);
        assert_eq!(detect_format(b"\x7fEL"), None);
        assert_eq!(detect_format(&[]), None);
    }

    #[test]
    fn elf_kernel_is_entered_in_long_mode_at_its_entry_with_the_zero_page_in_rsi() {
        let m = mem(64 * MIB);
        let b = load(&m, &simple_elf(false), None, "console=ttyS0", false).unwrap();
        assert_eq!(b.format, KernelFormat::Elf);
        assert_eq!(b.entry, ELF_ENTRY);
        assert_eq!(b.mode, EntryMode::Long64);
        assert_eq!((b.rsi, b.rbx), (ZERO_PAGE_ADDR, 0));
        assert_eq!(
            (b.kernel_start, b.kernel_end),
            (ELF_ENTRY, ELF_ENTRY + 0x2000)
        );
        let first: [u8; 4] = m.read_obj(GuestAddress(ELF_ENTRY)).unwrap();
        assert_eq!(first, [0, 1, 2, 3]);
    }

    #[test]
    fn elf_bss_is_zeroed_and_counts_as_kernel() {
        let m = mem(64 * MIB);
        for a in [ELF_ENTRY + 0x1000, ELF_ENTRY + 0x4800] {
            m.write_obj(0xdead_beef_u32, GuestAddress(a)).unwrap();
        }
        // A segment with a bss tail, and a memory-only segment.
        let img = elf(
            &[
                (ELF_ENTRY, vec![0x90; 64], 0x2000),
                (ELF_ENTRY + 0x4000, Vec::new(), 0x1000),
            ],
            ELF_ENTRY,
            None,
        );
        let b = load(&m, &img, None, "", false).unwrap();
        assert_eq!(b.kernel_end, ELF_ENTRY + 0x5000);
        for a in [ELF_ENTRY + 0x1000, ELF_ENTRY + 0x4800] {
            let v: u32 = m.read_obj(GuestAddress(a)).unwrap();
            assert_eq!(v, 0, "{a:#x}");
        }
    }

    #[test]
    fn zero_page_carries_the_loader_fields_for_a_vmlinux() {
        let m = mem(64 * MIB);
        load(&m, &simple_elf(false), None, "quiet", false).unwrap();
        let p = zero_page_of(&m);
        let h = p.hdr;
        let (flag, magic, loader) = (h.boot_flag, h.header, h.type_of_loader);
        assert_eq!((flag, magic, loader), (0xAA55, 0x5372_6448, 0xff));
        let (ptr, size, align) = (h.cmd_line_ptr, h.cmdline_size, h.kernel_alignment);
        assert_eq!((ptr, size, align), (CMDLINE_ADDR as u32, 2047, 0x100_0000));
        assert_ne!(h.loadflags & bootparam::LOADED_HIGH, 0);
        let (ri, rs) = (h.ramdisk_image, h.ramdisk_size);
        assert_eq!((ri, rs), (0, 0));
    }

    #[test]
    fn e820_for_a_128_mib_guest() {
        assert_eq!(
            e820_map(&ram_regions(128 * MIB)),
            vec![
                e(0, 0x9_fc00, E820_RAM),
                e(0x9_fc00, 0x10_0000, E820_RESERVED),
                e(0x10_0000, 128 * MIB, E820_RAM),
                e(0xE000_0000, 0xE010_0000, E820_RESERVED),
            ]
        );
    }

    #[test]
    fn e820_for_a_4_gib_guest_leaves_out_the_mmio_hole() {
        assert_eq!(
            e820_map(&ram_regions(4096 * MIB)),
            vec![
                e(0, 0x9_fc00, E820_RAM),
                e(0x9_fc00, 0x10_0000, E820_RESERVED),
                e(0x10_0000, 0xC000_0000, E820_RAM),
                e(0xE000_0000, 0xE010_0000, E820_RESERVED),
                e(0x1_0000_0000, 0x1_4000_0000, E820_RAM),
            ]
        );
    }

    #[test]
    fn zero_page_e820_matches_guest_memory() {
        let m = mem(64 * MIB);
        load(&m, &simple_elf(false), None, "", false).unwrap();
        assert_eq!(e820_of(&zero_page_of(&m)), e820_map(&[(0, 64 * MIB)]));
        assert_eq!(guest_ram(&m), vec![(0, 64 * MIB)]);
    }

    #[test]
    fn command_line_is_written_nul_terminated_at_cmdline_addr() {
        let m = mem(64 * MIB);
        m.write_slice(&[0xffu8; 32], GuestAddress(CMDLINE_ADDR))
            .unwrap();
        load(&m, &simple_elf(false), None, "console=ttyS0", false).unwrap();
        let mut s = [0u8; 14];
        m.read_slice(&mut s, GuestAddress(CMDLINE_ADDR)).unwrap();
        assert_eq!(&s, b"console=ttyS0\0");
    }

    #[test]
    fn command_line_longer_than_the_kernel_accepts_is_refused() {
        let m = mem(64 * MIB);
        let ok = "x".repeat(ELF_CMDLINE_MAX);
        load(&m, &simple_elf(false), None, &ok, false).unwrap();
        let long = "x".repeat(ELF_CMDLINE_MAX + 1);
        assert!(matches!(
            load(&m, &simple_elf(false), None, &long, false),
            Err(LinuxError::CmdlineTooLong {
                len: 2048,
                max: 2047
            })
        ));
        let mut h = bz_header();
        h.cmdline_size = 16;
        let bz = bzimage(h, 4096);
        load(&m, &bz, None, &"y".repeat(16), false).unwrap();
        assert!(matches!(
            load(&m, &bz, None, &"y".repeat(17), false),
            Err(LinuxError::CmdlineTooLong { len: 17, max: 16 })
        ));
    }

    #[test]
    fn command_line_with_a_nul_byte_is_refused() {
        let m = mem(64 * MIB);
        assert!(matches!(
            load(&m, &simple_elf(false), None, "a\0b", false),
            Err(LinuxError::CmdlineHasNul)
        ));
    }

    #[test]
    fn initrd_goes_page_aligned_to_the_top_of_ram() {
        let m = mem(64 * MIB);
        let rd: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let b = load(&m, &simple_elf(false), Some(&rd), "", false).unwrap();
        let (addr, size) = b.initrd.unwrap();
        assert_eq!(size, 10_000);
        assert_eq!(addr % PAGE_SIZE, 0);
        assert!(addr + size <= 64 * MIB && addr + size + PAGE_SIZE > 64 * MIB);
        let mut back = vec![0u8; rd.len()];
        m.read_slice(&mut back, GuestAddress(addr)).unwrap();
        assert_eq!(back, rd);
        let h = zero_page_of(&m).hdr;
        let (ri, rs) = (h.ramdisk_image, h.ramdisk_size);
        assert_eq!((ri as u64, rs as u64), (addr, size));
    }

    #[test]
    fn initrd_stays_below_initrd_addr_max() {
        let m = mem(64 * MIB);
        let mut h = bz_header();
        h.initrd_addr_max = (32 * MIB - 1) as u32;
        let b = load(&m, &bzimage(h, 4096), Some(&[7u8; 5000]), "", false).unwrap();
        let (addr, size) = b.initrd.unwrap();
        assert!(addr + size <= 32 * MIB);
        assert_eq!(addr, 32 * MIB - 2 * PAGE_SIZE);
    }

    #[test]
    fn initrd_too_big_to_fit_above_the_kernel_is_refused() {
        let m = mem(32 * MIB);
        // The kernel ends at 16 MiB + 0x2000; 16 MiB of initrd cannot fit.
        let rd = vec![0u8; 16 * MIB as usize];
        assert!(matches!(
            load(&m, &simple_elf(false), Some(&rd), "", false),
            Err(LinuxError::InitrdDoesNotFit { .. })
        ));
        // The bzImage decompresses into 16..24 MiB: 9 MiB above does not fit.
        let rd = vec![0u8; 9 * MIB as usize];
        assert!(matches!(
            load(&m, &bzimage(bz_header(), 4096), Some(&rd), "", false),
            Err(LinuxError::InitrdDoesNotFit { .. })
        ));
        let rd = vec![0u8; 8 * MIB as usize];
        let b = load(&m, &bzimage(bz_header(), 4096), Some(&rd), "", false).unwrap();
        assert!(b.initrd.unwrap().0 >= b.kernel_end);
    }

    #[test]
    fn empty_initrd_is_not_passed() {
        let m = mem(64 * MIB);
        let b = load(&m, &simple_elf(false), Some(&[]), "", false).unwrap();
        assert_eq!(b.initrd, None);
    }

    #[test]
    fn bzimage_is_loaded_at_1mib_and_entered_at_0x200_with_its_header_in_the_zero_page() {
        let m = mem(64 * MIB);
        let img = bzimage(bz_header(), 8192);
        let b = load(&m, &img, None, "ro", false).unwrap();
        assert_eq!(b.format, KernelFormat::BzImage);
        assert_eq!(b.entry, 0x10_0000 + 0x200);
        assert_eq!(b.mode, EntryMode::Long64);
        assert_eq!(b.rsi, ZERO_PAGE_ADDR);
        // Decompressed at pref_address (16 MiB) for init_size (8 MiB).
        assert_eq!((b.kernel_start, b.kernel_end), (MIB, 24 * MIB));
        let mut payload = vec![0u8; 8192];
        m.read_slice(&mut payload, GuestAddress(MIB)).unwrap();
        assert_eq!(payload, img[1024..]);
        let h = zero_page_of(&m).hdr;
        let (ver, magic, loader, ptr) = (h.version, h.header, h.type_of_loader, h.cmd_line_ptr);
        assert_eq!((ver, magic, loader), (0x020f, HDRS_MAGIC, 0xff));
        assert_eq!(ptr, CMDLINE_ADDR as u32);
        let (c32, align, init) = (h.code32_start, h.kernel_alignment, h.init_size);
        assert_eq!((c32, align, init), (0x10_0000, 0x20_0000, 0x80_0000));
        assert_eq!(
            h.loadflags & (bootparam::LOADED_HIGH | bootparam::CAN_USE_HEAP),
            bootparam::LOADED_HIGH | bootparam::CAN_USE_HEAP
        );
        assert_eq!(e820_of(&zero_page_of(&m)), e820_map(&[(0, 64 * MIB)]));
    }

    #[test]
    fn bzimage_without_a_64bit_entry_is_refused() {
        let m = mem(64 * MIB);
        let mut old = bz_header();
        old.version = 0x020a;
        assert!(matches!(
            load(&m, &bzimage(old, 4096), None, "", false),
            Err(LinuxError::No64BitEntry { version: 0x020a })
        ));
        let mut no64 = bz_header();
        no64.xloadflags = 0;
        assert!(matches!(
            load(&m, &bzimage(no64, 4096), None, "", false),
            Err(LinuxError::No64BitEntry { .. })
        ));
        let mut zimage = bz_header();
        zimage.loadflags = 0;
        assert!(matches!(
            load(&m, &bzimage(zimage, 4096), None, "", false),
            Err(LinuxError::UnsupportedBzImage(_))
        ));
    }

    #[test]
    fn bzimage_that_does_not_fit_in_guest_memory_is_refused() {
        // 16 MiB guest: the kernel would decompress at 16..24 MiB.
        let m = mem(16 * MIB);
        assert!(matches!(
            load(&m, &bzimage(bz_header(), 4096), None, "", false),
            Err(LinuxError::KernelDoesNotFit { .. })
        ));
    }

    #[test]
    fn pvh_boot_of_a_bzimage_is_refused() {
        let m = mem(64 * MIB);
        assert!(matches!(
            load(&m, &bzimage(bz_header(), 4096), None, "", true),
            Err(LinuxError::NoPvhEntry)
        ));
    }

    #[test]
    fn truncated_images_are_errors_not_panics() {
        let m = mem(64 * MIB);
        let elf = simple_elf(true);
        for len in 0..elf.len() {
            assert!(
                load(&m, &elf[..len], None, "", false).is_err(),
                "ELF cut at {len}"
            );
        }
        let bz = bzimage(bz_header(), 64);
        for len in 0..=1024 {
            assert!(
                load(&m, &bz[..len], None, "", false).is_err(),
                "bzImage cut at {len}"
            );
        }
        assert!(matches!(
            load(&m, &elf[..100], None, "", false),
            Err(LinuxError::Truncated(_))
        ));
    }

    #[test]
    fn corrupted_headers_never_panic() {
        let m = mem(64 * MIB);
        let elf = simple_elf(true);
        let bz = bzimage(bz_header(), 64);
        for (img, range) in [
            (&elf, 0..elf.len()),
            (&bz, SETUP_HEADER_OFFSET..SETUP_HEADER_END),
        ] {
            for i in range {
                for v in [0x00, 0x80, 0xff] {
                    let mut bad = img.clone();
                    bad[i] = v;
                    // Refused with a typed error, or loaded wholly inside
                    // guest RAM above 1 MiB with the entry in it.
                    let loaded = [
                        load(&m, &bad, Some(&[1, 2, 3]), "x", false),
                        load(&m, &bad, None, "", true),
                    ];
                    for b in loaded.into_iter().flatten() {
                        assert!(
                            b.kernel_start >= MIB
                                && b.kernel_start < b.kernel_end
                                && b.kernel_end <= 64 * MIB,
                            "byte {i} = {v:#x}: kernel at {:#x}..{:#x}",
                            b.kernel_start,
                            b.kernel_end
                        );
                        assert!(
                            (b.kernel_start..b.kernel_end).contains(&b.entry),
                            "byte {i} = {v:#x}: entry {:#x} outside the kernel",
                            b.entry
                        );
                        if let Some((at, len)) = b.initrd {
                            assert!(at >= b.kernel_end && at + len <= 64 * MIB);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let m = mem(64 * MIB);
        assert!(matches!(
            load(&m, &[0x5au8; 4096], None, "", false),
            Err(LinuxError::UnknownFormat)
        ));
    }

    #[test]
    fn elf32_and_foreign_elf_are_refused() {
        let m = mem(64 * MIB);
        let mut e32 = simple_elf(false);
        e32[4] = 1;
        assert!(matches!(
            load(&m, &e32, None, "", false),
            Err(LinuxError::UnsupportedElf(_))
        ));
        let mut arm = simple_elf(false);
        arm[18] = 183; // EM_AARCH64
        assert!(matches!(
            load(&m, &arm, None, "", false),
            Err(LinuxError::UnsupportedElf(_))
        ));
    }

    #[test]
    fn kernel_beyond_guest_ram_or_below_1mib_is_refused() {
        let m = mem(16 * MIB);
        assert!(matches!(
            load(&m, &simple_elf(false), None, "", false),
            Err(LinuxError::KernelDoesNotFit { .. })
        ));
        let m = mem(64 * MIB);
        let low = elf(&[(0x8000, vec![0x90; 16], 16)], 0x8000, None);
        assert!(matches!(
            load(&m, &low, None, "", false),
            Err(LinuxError::KernelDoesNotFit { .. })
        ));
        let huge = elf(&[(ELF_ENTRY, vec![0x90; 16], u64::MAX)], ELF_ENTRY, None);
        assert!(matches!(
            load(&m, &huge, None, "", false),
            Err(LinuxError::KernelDoesNotFit { .. })
        ));
    }

    #[test]
    fn default_entry_is_64bit_even_with_a_pvh_note() {
        let m = mem(64 * MIB);
        let b = load(&m, &simple_elf(true), None, "", false).unwrap();
        assert_eq!((b.entry, b.mode), (ELF_ENTRY, EntryMode::Long64));
    }

    #[test]
    fn a_pvh_entry_outside_the_loaded_segments_is_refused() {
        let m = mem(64 * MIB);
        let code = (0..64u8).collect::<Vec<_>>();
        let img = elf(&[(ELF_ENTRY, code, 0x2000)], ELF_ENTRY, Some(0x300_0000));
        assert!(matches!(
            load(&m, &img, None, "", true),
            Err(LinuxError::UnsupportedElf(m)) if m.contains("PVH entry")
        ));
        // The 64-bit entry does not use the note: that boot is fine.
        assert!(load(&m, &img, None, "", false).is_ok());
    }

    #[test]
    fn pvh_entry_starts_protected_mode_with_start_info_in_rbx() {
        let m = mem(64 * MIB);
        let rd = [9u8; 3000];
        let b = load(&m, &simple_elf(true), Some(&rd), "console=ttyS0", true).unwrap();
        assert_eq!(b.entry, PVH_ENTRY as u64);
        assert_eq!(b.mode, EntryMode::Protected32);
        assert_eq!((b.rsi, b.rbx), (0, ZERO_PAGE_ADDR));

        let si: hvm_start_info = m.read_obj(GuestAddress(b.rbx)).unwrap();
        assert_eq!(si.magic, 0x336e_c578);
        assert_eq!(si.version, 1);
        assert_eq!(si.cmdline_paddr, CMDLINE_ADDR);
        assert_eq!(si.nr_modules, 1);
        let md: hvm_modlist_entry = m.read_obj(GuestAddress(si.modlist_paddr)).unwrap();
        assert_eq!((md.paddr, md.size), b.initrd.unwrap());
        let want = e820_map(&[(0, 64 * MIB)]);
        assert_eq!(si.memmap_entries as usize, want.len());
        for (i, w) in want.iter().enumerate() {
            let got: hvm_memmap_table_entry = m
                .read_obj(GuestAddress(si.memmap_paddr + 24 * i as u64))
                .unwrap();
            assert_eq!((got.addr, got.size, got.type_), (w.addr, w.size, w.kind));
        }
    }

    #[test]
    fn pvh_requested_without_a_note_is_refused() {
        let m = mem(64 * MIB);
        assert!(matches!(
            load(&m, &simple_elf(false), None, "", true),
            Err(LinuxError::NoPvhEntry)
        ));
    }

    /// Loads a real kernel: `SPLITVM_VMLINUX=/path/vmlinux cargo test -p arch
    /// -- --ignored real_vmlinux --nocapture` (default: the first
    /// `$HOME/.cache/splitvm/kernel-*/vmlinux`).
    #[test]
    #[ignore]
    fn real_vmlinux_loads_with_sane_boot_params() {
        let path = std::env::var("SPLITVM_VMLINUX").unwrap_or_else(|_| {
            let cache = format!("{}/.cache/splitvm", std::env::var("HOME").unwrap());
            std::fs::read_dir(&cache)
                .unwrap()
                .filter_map(|d| d.ok())
                .map(|d| d.path().join("vmlinux"))
                .find(|p| p.is_file())
                .expect("no kernel-*/vmlinux in ~/.cache/splitvm")
                .display()
                .to_string()
        });
        let m = mem(128 * MIB);
        let mut k = std::fs::File::open(&path).unwrap();
        let mut rd = Cursor::new(vec![0u8; 3 * MIB as usize]);
        let b = load_linux_from(&m, &mut k, Some(&mut rd), "console=ttyS0", false).unwrap();
        println!("{path}: {b:#x?}");
        let p = zero_page_of(&m);
        println!("e820: {:#x?}", e820_of(&p));
        assert_eq!(b.mode, EntryMode::Long64);
        assert!(b.entry >= b.kernel_start && b.entry < b.kernel_end);
        let (addr, size) = b.initrd.unwrap();
        assert!(addr >= b.kernel_end && addr + size <= 128 * MIB);
        let mut k = std::fs::File::open(&path).unwrap();
        let m = mem(128 * MIB);
        match load_linux(&m, &mut k, None, "console=ttyS0", true) {
            Ok(b) => println!("PVH: entry {:#x}", b.entry),
            Err(e) => println!("PVH: {e}"),
        }
    }
}
