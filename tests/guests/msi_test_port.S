/*
 * msi_test_port - MSIs injected through splitvm's MSI test port (0x2200).
 * Needs 2 vCPUs.  Address 0xfee00000 | (APIC ID << 12), data = vector
 * (edge, fixed): vector 0x45 to vCPU 0, then vector 0x46 to vCPU 1.  The
 * port's read-back count goes 0, 1, 2.  (QEMU has no such port: this guest
 * runs under splitvm only.)
 * Expected splitvm stats: msi_test_port.injected 2; no EOI exit.
 */
.include "guest.inc"
.equ VEC0, 0x45
.equ VEC1, 0x46

.section .rodata
.globl test_name
test_name: .asciz "msi_test_port"

.text
.globl test_main
test_main:
    push %ebx
    call msi_injected
    mov %eax, %ebx
    cmp $0xffffffff, %ebx
    jne 1f
    FAIL 1, "no MSI test port at 0x2200 (reads all-ones; not splitvm --test-devices?)"
1:  EXPECT_EQ %ebx, $0, 2, "MSI test port count starts at 0"
    mov $VEC0, %eax
    call irq_allow
    mov $VEC1, %eax
    call irq_allow
    mov $2, %eax
    call smp_start

    mov cpu_apic_id, %eax
    shl $12, %eax
    or $APIC_BASE, %eax
    mov $VEC0, %edx
    call msi_inject
    mov $(irq_count + 4 * VEC0), %eax
    mov $1, %edx
    mov $2000, %ecx
    call wait_count
    EXPECT_EQ %eax, $0, 3, "MSI vector 0x45 delivered to vCPU 0"
    call msi_injected
    mov %eax, %ebx
    EXPECT_EQ %ebx, $1, 4, "MSI test port counts 1 injection"

    mov cpu_apic_id + 4, %eax
    shl $12, %eax
    or $APIC_BASE, %eax
    mov $VEC1, %edx
    call msi_inject
    mov $(irq_count + 4 * (256 + VEC1)), %eax
    mov $1, %edx
    mov $2000, %ecx
    call wait_count
    EXPECT_EQ %eax, $0, 5, "MSI vector 0x46 delivered to vCPU 1"
    call msi_injected
    mov %eax, %ebx
    EXPECT_EQ %ebx, $2, 6, "MSI test port counts 2 injections"

    mov $20, %eax
    call wait_ms
    EXPECT_EQ irq_count+4*VEC0, $1, 7, "vCPU 0 took exactly one MSI"
    EXPECT_EQ irq_count+4*VEC1, $0, 8, "vCPU 0 did not take vCPU 1's MSI"
    EXPECT_EQ irq_count+4*(256+VEC1), $1, 9, "vCPU 1 took exactly one MSI"
    EXPECT_EQ irq_count+4*(256+VEC0), $0, 10, "vCPU 1 did not take vCPU 0's MSI"

    xor %eax, %eax
    pop %ebx
    ret
