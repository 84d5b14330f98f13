fn main() {
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    let c = kvm.get_supported_cpuid(80).unwrap();
    for e in c.as_slice() { println!("{:08x} {:x} {:x} {:08x} {:08x} {:08x} {:08x}", e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx); }
}
