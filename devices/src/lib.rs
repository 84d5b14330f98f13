//! Userspace devices of splitvm: the I/O APIC, legacy platform devices and
//! the test devices used by micro-guests and kvm-unit-tests.
//!
//! Devices never panic on guest-controlled input: out-of-range accesses are
//! ignored on write and read as all-ones (or zero where hardware does so).

pub mod acpi_pm;
pub mod bus;
pub mod channel;
pub mod control;
pub mod fwcfg;
pub mod interrupt;
pub mod ioapic;
pub mod irq_line;
pub mod legacy;
pub mod pci;
pub mod pic;
pub mod pit;
pub mod serial;
pub mod state;
pub mod sync;
pub mod test_env;
pub mod testdev;
pub mod thread_start;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
pub use control::{ExitReason, VmControl};
pub use interrupt::{InterruptError, MsiMessage, MsiRouting};
pub use irq_line::IrqLine;
pub use state::{DeviceState, StateError};
