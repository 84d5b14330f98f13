//! PCI: a single segment with bus 0, configuration mechanism #1 (ports
//! 0xCF8/0xCFC), 32-bit memory BARs in one MMIO window, MSI and MSI-X.
//!
//! # How the pieces fit
//!
//! - [`PciConfiguration`] is a type 0 configuration header with BAR sizing,
//!   a capability list, and MSI/MSI-X capabilities whose registers live in
//!   [`MsiConfig`] / [`MsixConfig`].
//! - A device implements [`PciDevice`]: its configuration space plus BAR
//!   accesses.
//! - [`PciSegment`] owns bus 0 (a host bridge at 00:00.0 and devices at
//!   00:01.0..00:1f.0), allocates BARs in the MMIO window, and knows where
//!   every BAR currently decodes. It hands out two [`BusDevice`]s:
//!   [`PciConfigIo`] for ports 0xCF8..0xCFF, and [`PciMmioWindow`] covering
//!   the whole MMIO window, which routes each access by the current BAR
//!   values. A guest that reprograms a BAR therefore needs no change to the
//!   VMM's (immutable) MMIO bus; the device is told through
//!   [`PciDevice::bar_moved`] so it can move its ioeventfds.
//! - MSI and MSI-X vectors each own a KVM GSI (from a shared
//!   [`GsiAllocator`](crate::interrupt::GsiAllocator)) with an irqfd
//!   registered once. A device signals with [`MsixConfig::trigger`] /
//!   [`MsixVector::trigger`], which checks the masks in userspace and either
//!   writes the irqfd (no vCPU exit, no ioctl) or sets the pending bit.
//!
//! [`BusDevice`]: crate::bus::BusDevice

mod config;
mod msi;
mod msix;
pub mod msix_testdev;
mod segment;
mod vector;

#[cfg(test)]
pub(crate) mod testutil;

pub use config::{
    BarKind, PciConfiguration, PciIds, CAP_ID_MSI, CAP_ID_MSIX, CAP_ID_VENDOR, COMMAND_BUS_MASTER,
    COMMAND_INTX_DISABLE, COMMAND_IO, COMMAND_MEMORY, NUM_BARS, STATUS_CAP_LIST,
};
pub use msi::MsiConfig;
pub use msix::{
    MsixConfig, MsixSnapshot, MsixStats, MsixVector, MSIX_MAX_VECTORS, MSIX_TABLE_ENTRY_SIZE,
};
pub use segment::{
    BarRoute, HostBridge, PciConfigIo, PciConfigIoState, PciEcam, PciMmioWindow, PciSegment,
    PciSegmentState, PciStats, HOST_BRIDGE_DEVICE_ID, HOST_BRIDGE_VENDOR_ID, PCI_CONFIG_IO_BASE,
    PCI_CONFIG_IO_LEN,
};
pub use vector::{VectorReport, VectorStats};

use crate::interrupt::InterruptError;

/// Errors setting up PCI devices (never from guest accesses: those are
/// ignored and counted).
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    #[error("no free PCI slot on bus 0")]
    NoFreeSlot,
    #[error("PCI slot {0} is invalid or already in use")]
    SlotUnavailable(u8),
    #[error("BAR {bar} ({size:#x} bytes) does not fit in the PCI MMIO window")]
    WindowFull { bar: usize, size: u64 },
    #[error("invalid BAR {0} (index, size or kind)")]
    InvalidBar(usize),
    #[error("no room left in configuration space for a capability")]
    CapabilitySpace,
    #[error("invalid number of interrupt vectors: {0}")]
    InvalidVectorCount(usize),
    #[error("out of GSIs: {0} needed")]
    GsiExhausted(usize),
    #[error("interrupt setup: {0}")]
    Interrupt(#[from] InterruptError),
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
}

/// A function on the PCI bus: configuration space and memory BARs.
///
/// The segment calls these with the device locked; implementations must not
/// call back into the [`PciSegment`].
pub trait PciDevice: Send {
    /// Short name for statistics.
    fn name(&self) -> &str;
    fn config(&self) -> &PciConfiguration;
    fn config_mut(&mut self) -> &mut PciConfiguration;
    /// Guest read of configuration dword `reg` (0..64).
    fn read_config_register(&mut self, reg: usize) -> u32 {
        self.config().read_reg(reg)
    }
    /// Guest write of `data` (1, 2 or 4 bytes) at byte `offset` of dword
    /// `reg`; `offset + data.len() <= 4`.
    fn write_config_register(&mut self, reg: usize, offset: usize, data: &[u8]) {
        self.config_mut().write_reg(reg, offset, data);
    }
    /// Guest read at `offset` within memory BAR `bar`.
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// Guest write at `offset` within memory BAR `bar`.
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// BAR `bar` stopped decoding at `old` and/or started decoding at `new`
    /// (reprogrammed, or memory decoding switched in the command register).
    fn bar_moved(&mut self, _bar: usize, _old: Option<u64>, _new: Option<u64>) {}
    /// The function's state for a snapshot (configuration space and
    /// whatever the device keeps); by default it cannot be snapshotted.
    fn save_state(&self) -> Result<crate::DeviceState, crate::StateError> {
        Err(crate::StateError::Unsupported)
    }
    /// Put back a saved state (the segment then re-decodes the BARs).
    fn restore_state(&mut self, _state: &crate::DeviceState) -> Result<(), crate::StateError> {
        Err(crate::StateError::Unsupported)
    }
    /// Stop (`true`) or resume the device's own activity for a snapshot.
    fn pause(&mut self, _paused: bool) -> Result<(), crate::StateError> {
        Ok(())
    }
}
