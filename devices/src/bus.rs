//! A small address-range bus for port I/O and MMIO devices.
//!
//! Each registered device gets an index, so the VMM can count exits per
//! device without a lookup table of its own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::state::{BusStateError, DeviceState, SavedDevice, StateError};
use crate::sync::lock;

/// A device on a [`Bus`]. `offset` is relative to the start of the range the
/// device was registered at. Accesses are 1, 2, 4 or 8 bytes.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);

    /// The device's state for a snapshot (see [`crate::state`]): `Ok(None)`
    /// when it has none of its own; by default it cannot be snapshotted.
    fn save_state(&self) -> Result<Option<DeviceState>, StateError> {
        Err(StateError::Unsupported)
    }

    /// Put back what [`save_state`](BusDevice::save_state) gave. Called
    /// before any vCPU runs, after the irqchip is restored.
    fn restore_state(&mut self, _state: &DeviceState) -> Result<(), StateError> {
        Err(StateError::Unsupported)
    }

    /// Stop (`true`) or resume device-initiated activity (timers raising
    /// interrupts) while a snapshot is taken; guest accesses are not
    /// affected (the vCPUs are paused then anyway).
    fn pause(&mut self, _paused: bool) {}
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("range {base:#x}+{len:#x} overlaps a registered device")]
    Overlap { base: u64, len: u64 },
    #[error("empty range at {0:#x}")]
    Empty(u64),
}

/// A device on the bus with its name and lowest address.
type Placed<'a> = (String, u64, &'a Arc<Mutex<dyn BusDevice>>);

struct Entry {
    len: u64,
    offset_base: u64,
    index: usize,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Address-ordered set of devices.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
    names: Vec<String>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `device` at `[base, base+len)` under `name`; returns its index.
    pub fn insert(
        &mut self,
        name: &str,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<usize, BusError> {
        self.insert_with_offset(name, base, len, device, 0)
    }

    /// Like [`Bus::insert`], but the device sees offsets starting at
    /// `offset_base` (one device answering at scattered ports, e.g. the
    /// i8042 at 0x60 and 0x64).
    pub fn insert_with_offset(
        &mut self,
        name: &str,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
        offset_base: u64,
    ) -> Result<usize, BusError> {
        if len == 0 {
            return Err(BusError::Empty(base));
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        if let Some((b, e)) = self.ranges.range(..end).next_back() {
            if b + e.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        let index = match self.names.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                self.names.push(name.to_string());
                self.names.len() - 1
            }
        };
        self.ranges.insert(
            base,
            Entry {
                len,
                offset_base,
                index,
                device,
            },
        );
        Ok(index)
    }

    /// Names of registered devices, by index.
    pub fn device_names(&self) -> &[String] {
        &self.names
    }

    fn find(&self, addr: u64) -> Option<(u64, &Entry)> {
        let (base, e) = self.ranges.range(..=addr).next_back()?;
        (addr - base < e.len).then_some((*base, e))
    }

    /// Device index that claims `addr`, if any.
    pub fn index_of(&self, addr: u64) -> Option<usize> {
        self.find(addr).map(|(_, e)| e.index)
    }

    /// Dispatch a read. Returns the device index, or `None` if unclaimed
    /// (then `data` is left untouched: the caller fills all-ones).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Option<usize> {
        let (base, e) = self.find(addr)?;
        lock(&e.device).read(addr - base + e.offset_base, data);
        Some(e.index)
    }

    /// Dispatch a write. Returns the device index, or `None` if unclaimed.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<usize> {
        let (base, e) = self.find(addr)?;
        lock(&e.device).write(addr - base + e.offset_base, data);
        Some(e.index)
    }

    /// Each device once (a device registered at several ranges appears at
    /// its lowest address), with its name and that address.
    fn unique(&self) -> Vec<Placed<'_>> {
        let mut seen = std::collections::HashSet::new();
        self.ranges
            .iter()
            .filter(|(_, e)| seen.insert(Arc::as_ptr(&e.device) as *const () as usize))
            .map(|(b, e)| (self.names[e.index].clone(), *b, &e.device))
            .collect()
    }

    /// The state of every device on the bus that has one.
    pub fn save(&self) -> Result<Vec<SavedDevice>, BusStateError> {
        let mut out = Vec::new();
        for (name, base, d) in self.unique() {
            match lock(d).save_state() {
                Ok(Some(state)) => out.push(SavedDevice { name, base, state }),
                Ok(None) => {}
                Err(err) => return Err(BusStateError::Device { name, base, err }),
            }
        }
        Ok(out)
    }

    /// Restore every device from `saved`, which must hold exactly the
    /// devices with state on this bus.
    pub fn restore(&self, saved: &[SavedDevice]) -> Result<(), BusStateError> {
        let devices = self.unique();
        if let Some(s) = saved
            .iter()
            .find(|s| !devices.iter().any(|(n, b, _)| *n == s.name && *b == s.base))
        {
            return Err(BusStateError::Unknown {
                name: s.name.clone(),
                base: s.base,
            });
        }
        for (name, base, d) in devices {
            let mut dev = lock(d);
            match saved.iter().find(|s| s.name == name && s.base == base) {
                Some(s) => dev
                    .restore_state(&s.state)
                    .map_err(|err| BusStateError::Device { name, base, err })?,
                None => match dev.save_state() {
                    Ok(None) => {}
                    _ => return Err(BusStateError::Missing { name, base }),
                },
            }
        }
        Ok(())
    }

    /// [`BusDevice::pause`] on every device.
    pub fn pause(&self, paused: bool) {
        for (_, _, d) in self.unique() {
            lock(d).pause(paused);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(u8);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn access_inside_range_reaches_device_with_offset() {
        let mut bus = Bus::new();
        bus.insert("r", 0x100, 8, Arc::new(Mutex::new(Reg(10))))
            .unwrap();
        let mut d = [0u8; 1];
        assert_eq!(bus.read(0x103, &mut d), Some(0));
        assert_eq!(d[0], 13);
        assert_eq!(bus.write(0x100, &[1]), Some(0));
        bus.read(0x100, &mut d);
        assert_eq!(d[0], 1);
    }

    #[test]
    fn access_outside_any_range_is_unclaimed() {
        let mut bus = Bus::new();
        bus.insert("r", 0x100, 8, Arc::new(Mutex::new(Reg(0))))
            .unwrap();
        let mut d = [0u8; 1];
        assert_eq!(bus.read(0x108, &mut d), None);
        assert_eq!(bus.read(0xff, &mut d), None);
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let mut bus = Bus::new();
        bus.insert("a", 0x100, 8, Arc::new(Mutex::new(Reg(0))))
            .unwrap();
        assert!(bus
            .insert("b", 0x107, 2, Arc::new(Mutex::new(Reg(0))))
            .is_err());
        assert!(bus
            .insert("c", 0xf8, 9, Arc::new(Mutex::new(Reg(0))))
            .is_err());
        assert!(bus
            .insert("d", 0x108, 1, Arc::new(Mutex::new(Reg(0))))
            .is_ok());
    }

    #[test]
    fn offset_base_shifts_offsets_seen_by_device() {
        let mut bus = Bus::new();
        bus.insert_with_offset("k", 0x64, 1, Arc::new(Mutex::new(Reg(0))), 4)
            .unwrap();
        let mut d = [0u8; 1];
        bus.read(0x64, &mut d);
        assert_eq!(d[0], 4);
    }

    struct Saved(u32);
    impl BusDevice for Saved {
        fn read(&mut self, _offset: u64, _data: &mut [u8]) {}
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0].into();
        }
        fn save_state(&self) -> Result<Option<DeviceState>, StateError> {
            Ok(Some(DeviceState::of("saved", &self.0)?))
        }
        fn restore_state(&mut self, s: &DeviceState) -> Result<(), StateError> {
            self.0 = s.get("saved")?;
            Ok(())
        }
    }

    fn saved_bus(v: u8) -> Bus {
        let mut bus = Bus::new();
        let d = Arc::new(Mutex::new(Saved(0)));
        bus.insert("s", 0x10, 1, d.clone()).unwrap();
        bus.insert("s", 0x20, 1, d).unwrap();
        bus.write(0x10, &[v]);
        bus
    }

    #[test]
    fn a_device_at_two_ranges_is_saved_once_and_restored() {
        let saved = saved_bus(7).save().unwrap();
        assert_eq!(saved.len(), 1);
        assert_eq!((saved[0].name.as_str(), saved[0].base), ("s", 0x10));
        let bus = saved_bus(0);
        bus.restore(&saved).unwrap();
        assert_eq!(bus.save().unwrap()[0].state, saved[0].state);
    }

    #[test]
    fn a_device_without_snapshot_support_fails_the_save_with_its_name() {
        let mut bus = saved_bus(1);
        bus.insert("reg", 0x100, 8, Arc::new(Mutex::new(Reg(0))))
            .unwrap();
        let e = bus.save().unwrap_err();
        assert_eq!(
            e.to_string(),
            "device 'reg' at 0x100: this device cannot be snapshotted yet"
        );
    }

    #[test]
    fn a_snapshot_must_name_exactly_the_devices_with_state() {
        let saved = saved_bus(1).save().unwrap();
        let empty = Bus::new();
        assert!(matches!(
            empty.restore(&saved),
            Err(BusStateError::Unknown { .. })
        ));
        assert!(matches!(
            saved_bus(1).restore(&[]),
            Err(BusStateError::Missing { .. })
        ));
        let mut wrong = saved.clone();
        wrong[0].state.kind = "other".into();
        assert!(matches!(
            saved_bus(1).restore(&wrong),
            Err(BusStateError::Device { .. })
        ));
    }

    #[test]
    fn one_name_registered_twice_shares_an_index() {
        let mut bus = Bus::new();
        let a = bus
            .insert("pic", 0x20, 2, Arc::new(Mutex::new(Reg(0))))
            .unwrap();
        let b = bus
            .insert("pic", 0xa0, 2, Arc::new(Mutex::new(Reg(0))))
            .unwrap();
        assert_eq!(a, b);
    }
}
