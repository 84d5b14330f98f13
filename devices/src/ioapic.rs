//! Userspace 82093AA I/O APIC (placeholder; being written).
pub struct IoApic;
impl IoApic {
    pub fn set_irq(&mut self, _pin: usize, _level: bool) {}
}
