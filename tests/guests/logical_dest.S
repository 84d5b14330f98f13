/*
 * logical_dest - I/O APIC delivery in logical destination mode (flat model).
 * Needs 2 vCPUs.  Every CPU sets DFR = 0xffffffff (flat) and
 * LDR = 1 << (24 + cpu).  Pin 3 (edge, fixed, logical, vector 0x44) with
 * destination 0x01 reaches only vCPU 0, 0x02 only vCPU 1, 0x03 both.
 * Expected splitvm stats: pin 3 raised 3, delivered 3; no EOI exit.
 */
.include "guest.inc"
.equ PIN, 3
.equ VEC, 0x44

.section .rodata
.globl test_name
test_name: .asciz "logical_dest"

.text
/* pulse(eax = logical destination): program RTE 3, then pulse the line. */
pulse:
    mov %eax, %ecx
    shl $24, %ecx
    mov $PIN, %eax
    mov $(VEC | RTE_DEST_LOGICAL), %edx
    call ioapic_set_rte
    SET_LINE PIN, 1
    SET_LINE PIN, 0
    ret

/* wait_for(eax = cpu, edx = count) -> eax = 0 when reached */
wait_for:
    shl $8, %eax
    add $VEC, %eax
    lea irq_count(,%eax,4), %eax
    mov $2000, %ecx
    jmp wait_count

.globl test_main
test_main:
    push %ebx
    mov $VEC, %eax
    call irq_allow
    movl $apic_set_flat, ap_init_hook
    xor %eax, %eax
    call apic_set_flat
    mov $APIC_LDR, %eax
    call apic_read
    mov %eax, %ebx
    EXPECT_EQ %ebx, $0x01000000, 1, "vCPU 0 LDR reads back 0x01000000"
    mov $APIC_DFR, %eax
    call apic_read
    mov %eax, %ebx
    EXPECT_EQ %ebx, $0xffffffff, 2, "vCPU 0 DFR reads back flat model"
    mov $2, %eax
    call smp_start

    mov $0x01, %eax
    call pulse
    xor %eax, %eax
    mov $1, %edx
    call wait_for
    EXPECT_EQ %eax, $0, 3, "logical destination 0x01 reaches vCPU 0"
    mov $0x02, %eax
    call pulse
    mov $1, %eax
    mov $1, %edx
    call wait_for
    EXPECT_EQ %eax, $0, 4, "logical destination 0x02 reaches vCPU 1"
    EXPECT_EQ irq_count+4*VEC, $1, 5, "and not vCPU 0"
    mov $0x03, %eax
    call pulse
    xor %eax, %eax
    mov $2, %edx
    call wait_for
    EXPECT_EQ %eax, $0, 6, "logical destination 0x03 reaches vCPU 0"
    mov $1, %eax
    mov $2, %edx
    call wait_for
    EXPECT_EQ %eax, $0, 7, "logical destination 0x03 reaches vCPU 1"
    mov $20, %eax
    call wait_ms
    EXPECT_EQ irq_count+4*VEC, $2, 8, "vCPU 0 took 2 interrupts in all"
    EXPECT_EQ irq_count+4*(256+VEC), $2, 9, "vCPU 1 took 2 interrupts in all"

    xor %eax, %eax
    pop %ebx
    ret
