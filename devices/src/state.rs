//! Device state in a snapshot (docs/snapshot.md).
//!
//! Every device on a bus says what of its guest-visible state a snapshot
//! must keep ([`BusDevice::save_state`](crate::BusDevice::save_state)):
//! `Ok(None)` for a device with none (or whose state has another owner:
//! the I/O APIC and 8259 registers belong to the split irqchip), a
//! [`DeviceState`] otherwise, or [`StateError::Unsupported`] (the default)
//! for a device that cannot be snapshotted yet, so a snapshot of a machine
//! with one fails instead of silently dropping its state. Counters and
//! statistics are not state: a restored VM counts from the restore.

use serde::{Deserialize, Serialize};

/// Why a device's state cannot be saved or restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("this device cannot be snapshotted yet")]
    Unsupported,
    #[error("the saved state does not fit this device: {0}")]
    Mismatch(String),
}

/// The saved state of one device, tagged by its kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    Pit(Box<crate::pit::PitSnapshot>),
    Serial(crate::serial::UartState),
    ControlPort(crate::channel::ControlPortState),
    I8042(crate::legacy::I8042State),
    AcpiPm(crate::acpi_pm::AcpiPmState),
    Scratch(u32),
    MsiTestPort(crate::testdev::MsiTestPortState),
    FwCfg(crate::fwcfg::FwCfgState),
    PciConfigIo(crate::pci::PciConfigIoState),
    PciSegment(crate::pci::PciSegmentState),
}

impl StateError {
    /// The saved state is another kind of device's.
    pub fn wrong_kind(what: &str) -> StateError {
        StateError::Mismatch(format!("not {what}'s state"))
    }
}

/// One device's state in a snapshot, keyed by its bus name and the lowest
/// address it is registered at.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedDevice {
    pub name: String,
    pub base: u64,
    pub state: DeviceState,
}

/// A bus-wide save or restore failure, naming the device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusStateError {
    #[error("device '{name}' at {base:#x}: {err}")]
    Device {
        name: String,
        base: u64,
        err: StateError,
    },
    #[error("the snapshot has no state for device '{name}' at {base:#x}")]
    Missing { name: String, base: u64 },
    #[error(
        "the snapshot has state for device '{name}' at {base:#x}, which this machine does not have"
    )]
    Unknown { name: String, base: u64 },
}
