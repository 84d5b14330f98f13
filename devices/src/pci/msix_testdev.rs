//! An MSI-X test function (`--test-devices`), in the spirit of QEMU's
//! pci-testdev: the smallest PCI device that raises MSI-X interrupts, so a
//! micro-guest can measure the MSI-X path (`splitvm paths`) without a
//! virtio driver.
//!
//! - IDs 1234:5356 (the QEMU test-device vendor ID, a device ID of
//!   splitvm's), class ff0000 (unassigned), no legacy interrupt.
//! - BAR 0: 4 KiB of 32-bit memory. The MSI-X table of [`VECTORS`]
//!   entries at 0x000, its PBA at [`PBA_OFFSET`], and at [`DOORBELL`] a
//!   32-bit register: a write of `n` raises vector `n` (through its irqfd,
//!   or its pending bit while it is masked); a read returns how many
//!   writes raised a vector. Other offsets read 0 and ignore writes.

use crate::interrupt::{EventRegistry, MsiRouting, SharedGsiAllocator};
use crate::pci::{
    BarKind, MsixConfig, MsixSnapshot, PciConfiguration, PciDevice, PciError, PciIds,
};

pub const VENDOR_ID: u16 = 0x1234;
pub const DEVICE_ID: u16 = 0x5356;
pub const VECTORS: u16 = 4;
pub const BAR_SIZE: u64 = 0x1000;
pub const TABLE_OFFSET: u64 = 0;
pub const PBA_OFFSET: u64 = 0x800;
pub const DOORBELL: u64 = 0xc00;

/// The function.
pub struct MsixTestDevice {
    config: PciConfiguration,
    msix: MsixConfig,
    rung: u32,
}

/// Its snapshot state.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MsixTestState {
    pub config: Vec<u32>,
    pub msix: MsixSnapshot,
    pub rung: u32,
}

impl MsixTestDevice {
    pub fn new(
        routing: std::sync::Arc<dyn MsiRouting>,
        events: std::sync::Arc<dyn EventRegistry>,
        gsis: SharedGsiAllocator,
    ) -> Result<Self, PciError> {
        let mut config = PciConfiguration::new(PciIds {
            vendor_id: VENDOR_ID,
            device_id: DEVICE_ID,
            class_code: 0xff_00_00,
            revision: 1,
            subsystem_vendor_id: VENDOR_ID,
            subsystem_id: DEVICE_ID,
            interrupt_pin: 0,
        });
        config.add_bar(0, BAR_SIZE, BarKind::Mem32, false)?;
        let msix = MsixConfig::new(VECTORS, routing, events, gsis)?;
        config.add_msix_capability(msix.clone(), 0, TABLE_OFFSET as u32, 0, PBA_OFFSET as u32)?;
        Ok(MsixTestDevice {
            config,
            msix,
            rung: 0,
        })
    }

    /// The MSI-X state, for per-vector statistics.
    pub fn msix(&self) -> MsixConfig {
        self.msix.clone()
    }
}

impl PciDevice for MsixTestDevice {
    fn name(&self) -> &str {
        "msix-testdev"
    }
    fn config(&self) -> &PciConfiguration {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != 0 {
            return;
        }
        match offset {
            o if o < PBA_OFFSET => self.msix.read_table(o - TABLE_OFFSET, data),
            o if o < DOORBELL => self.msix.read_pba(o - PBA_OFFSET, data),
            DOORBELL => {
                let b = self.rung.to_le_bytes();
                let n = data.len().min(4);
                data[..n].copy_from_slice(&b[..n]);
            }
            _ => {}
        }
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        match offset {
            o if o < PBA_OFFSET => self.msix.write_table(o - TABLE_OFFSET, data),
            o if o < DOORBELL => self.msix.write_pba(o - PBA_OFFSET, data),
            DOORBELL if data.len() == 4 => {
                let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                if let Ok(v) = u16::try_from(v) {
                    if v < VECTORS {
                        self.msix.trigger(v);
                        self.rung = self.rung.wrapping_add(1);
                    }
                }
            }
            _ => {}
        }
    }

    fn save_state(&self) -> Result<crate::DeviceState, crate::StateError> {
        crate::DeviceState::of(
            "msix_testdev",
            &MsixTestState {
                config: self.config.registers(),
                msix: self.msix.save(),
                rung: self.rung,
            },
        )
    }

    fn restore_state(&mut self, s: &crate::DeviceState) -> Result<(), crate::StateError> {
        let s: MsixTestState = s.get("msix_testdev")?;
        self.config.set_registers(&s.config)?;
        self.msix.restore(&s.msix)?;
        self.rung = s.rung;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::GsiAllocator;
    use crate::pci::testutil::FakeKvm;
    use std::sync::Arc;

    fn device() -> (MsixTestDevice, Arc<FakeKvm>) {
        let kvm = Arc::new(FakeKvm::default());
        let d = MsixTestDevice::new(kvm.clone(), kvm.clone(), GsiAllocator::shared(4096)).unwrap();
        (d, kvm)
    }

    /// Program table entry `v` (address 0xfee00000, data `vector`), unmasked,
    /// and enable MSI-X.
    fn program(d: &mut MsixTestDevice, v: u64, vector: u32) {
        d.write_bar(0, v * 16, &0xfee0_0000u32.to_le_bytes());
        d.write_bar(0, v * 16 + 8, &vector.to_le_bytes());
        d.write_bar(0, v * 16 + 12, &0u32.to_le_bytes());
        d.msix.write_control(0x8000);
    }

    #[test]
    fn the_doorbell_raises_the_vector_written_and_counts() {
        let (mut d, kvm) = device();
        program(&mut d, 2, 0x52);
        d.write_bar(0, DOORBELL, &2u32.to_le_bytes());
        assert_eq!(kvm.signals_for_vector(0x52), 1);
        // Out of range, wrong size, or another BAR: nothing.
        d.write_bar(0, DOORBELL, &9u32.to_le_bytes());
        d.write_bar(0, DOORBELL, &[2]);
        d.write_bar(1, DOORBELL, &2u32.to_le_bytes());
        let mut b = [0u8; 4];
        d.read_bar(0, DOORBELL, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1);
    }

    #[test]
    fn a_masked_vector_is_pending_and_delivers_when_unmasked() {
        let (mut d, kvm) = device();
        program(&mut d, 0, 0x50);
        d.write_bar(0, 12, &1u32.to_le_bytes()); // mask entry 0
        d.write_bar(0, DOORBELL, &0u32.to_le_bytes());
        assert_eq!(kvm.signals_for_vector(0x50), 0);
        let mut pba = [0u8; 8];
        d.read_bar(0, PBA_OFFSET, &mut pba);
        assert_eq!(pba[0] & 1, 1, "pending");
        d.write_bar(0, 12, &0u32.to_le_bytes());
        assert_eq!(kvm.signals_for_vector(0x50), 1);
    }

    #[test]
    fn its_state_survives_a_snapshot() {
        let (mut d, _) = device();
        program(&mut d, 1, 0x51);
        d.write_bar(0, DOORBELL, &1u32.to_le_bytes());
        let s = d.save_state().unwrap();
        let (mut e, kvm) = device();
        e.restore_state(&s).unwrap();
        let mut b = [0u8; 4];
        e.read_bar(0, DOORBELL, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1);
        e.write_bar(0, DOORBELL, &1u32.to_le_bytes());
        assert_eq!(kvm.signals_for_vector(0x51), 1);
    }
}
