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

/// The saved state of one device: its kind and the device's own state
/// structure (documented beside the device) as JSON. Each device module
/// alone knows its layout; this module names none of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    pub kind: String,
    pub state: serde_json::Value,
}

impl DeviceState {
    /// `state` of a device of kind `kind`.
    pub fn of<T: Serialize>(kind: &str, state: &T) -> Result<DeviceState, StateError> {
        Ok(DeviceState {
            kind: kind.to_string(),
            state: serde_json::to_value(state).map_err(|e| StateError::Mismatch(e.to_string()))?,
        })
    }

    /// The state of a device of kind `kind`, if this is one.
    pub fn get<T: serde::de::DeserializeOwned>(&self, kind: &str) -> Result<T, StateError> {
        if self.kind != kind {
            return Err(StateError::Mismatch(format!(
                "a {} state given to a {kind}",
                self.kind
            )));
        }
        T::deserialize(&self.state).map_err(|e| StateError::Mismatch(format!("{kind}: {e}")))
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
