//! x86_64 guest setup for splitvm: memory layout, CPUID, boot registers,
//! descriptor tables and page tables, and the boot protocols.

pub mod acpi;
pub mod cpuid;
pub mod gdt;
pub mod lapic;
pub mod layout;
pub mod linux;
pub mod mptable;
pub mod multiboot;
pub mod paging;
pub mod regs;

pub use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap};
