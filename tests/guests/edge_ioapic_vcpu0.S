/*
 * edge_ioapic_vcpu0 - an edge-triggered I/O APIC pin delivered to vCPU 0.
 *
 * RTE 10: edge, active high, fixed, physical destination = BSP, vector 0x40.
 * A pulse on the line (pc-testdev 0x200a: 1 then 0) gives exactly one
 * interrupt, EOIed at the LAPIC.  A pulse while the pin is masked gives none.
 * Expected splitvm stats: pin 10 raised 2, delivered 1, masked_drops 1;
 * no EOI exit (edge vectors are not in the EOI-exit bitmap).
 * The I/O APIC's version is 0x20 (splitvm's, with the EOI register), or
 * "ioapic_version=N" from the command line (17 = 0x11: KVM's 82093AA).
 */
.include "guest.inc"
.equ PIN, 10
.equ VEC, 0x40

.section .rodata
.globl test_name
test_name: .asciz "edge_ioapic_vcpu0"
version_key: .asciz "ioapic_version="

.text
.globl test_main
test_main:
    push %ebx
    mov $version_key, %eax
    call cmdline_value
    test %edx, %edx
    jnz 1f
    mov $0x20, %eax
1:  or $0x00170000, %eax
    mov %eax, version
    mov $IOAPIC_REG_VER, %eax
    call ioapic_read
    mov %eax, %ebx
    EXPECT_EQ %ebx, version, 1, "I/O APIC version register (24 pins, the version expected)"

    mov $VEC, %eax
    call irq_allow
    mov $PIN, %eax
    mov $VEC, %edx                  /* edge, high, fixed, physical, unmasked */
    mov cpu_apic_id, %ecx
    shl $24, %ecx
    call ioapic_set_rte
    mov $PIN, %eax
    call ioapic_rte_low
    mov %eax, %ebx
    EXPECT_EQ %ebx, $VEC, 2, "RTE 10 low word reads back"

    SET_LINE PIN, 1
    SET_LINE PIN, 0
    mov $(irq_count + 4 * VEC), %eax
    mov $1, %edx
    mov $2000, %ecx
    call wait_count
    EXPECT_EQ %eax, $0, 3, "edge interrupt on pin 10 delivered to vCPU 0 (vector 0x40)"
    mov $20, %eax
    call wait_ms
    EXPECT_EQ irq_count+4*VEC, $1, 4, "exactly one interrupt for one edge"

    mov $PIN, %eax
    call ioapic_mask
    SET_LINE PIN, 1
    SET_LINE PIN, 0
    mov $20, %eax
    call wait_ms
    EXPECT_EQ irq_count+4*VEC, $1, 5, "edge on a masked pin is not delivered"

    xor %eax, %eax
    pop %ebx
    ret

.data
version: .long 0
