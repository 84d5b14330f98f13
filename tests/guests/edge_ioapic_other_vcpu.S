/*
 * edge_ioapic_other_vcpu - an edge-triggered I/O APIC pin routed to vCPU 1.
 * Needs 2 vCPUs.  RTE 10: edge, fixed, physical destination = APIC ID of
 * the AP, vector 0x40.  The AP takes the interrupt (EOI at its LAPIC) and
 * the runtime's per-CPU counter tells the BSP.
 * Expected splitvm stats: pin 10 raised 1, delivered 1; no EOI exit.
 */
.include "guest.inc"
.equ PIN, 10
.equ VEC, 0x40

.section .rodata
.globl test_name
test_name: .asciz "edge_ioapic_other_vcpu"

.text
.globl test_main
test_main:
    mov $VEC, %eax
    call irq_allow
    mov $2, %eax
    call smp_start

    mov $PIN, %eax
    mov $VEC, %edx
    mov cpu_apic_id + 4, %ecx       /* APIC ID of cpu 1 */
    shl $24, %ecx
    call ioapic_set_rte

    SET_LINE PIN, 1
    SET_LINE PIN, 0
    mov $(irq_count + 4 * (256 + VEC)), %eax
    mov $1, %edx
    mov $2000, %ecx
    call wait_count
    EXPECT_EQ %eax, $0, 1, "edge interrupt on pin 10 taken by vCPU 1"
    mov $20, %eax
    call wait_ms
    EXPECT_EQ irq_count+4*(256+VEC), $1, 2, "vCPU 1 took exactly one interrupt"
    EXPECT_EQ irq_count+4*VEC, $0, 3, "vCPU 0 took none"

    xor %eax, %eax
    ret
