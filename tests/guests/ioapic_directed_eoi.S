/*
 * ioapic_directed_eoi - the I/O APIC's EOI register (version 0x20, +0x40).
 * Pin 7: level, active high, vector 0x47, physical destination APIC ID 15,
 * which no vCPU has, so no LAPIC ever EOIs it: Remote IRR is set by the
 * delivery and stays set, on any host (including kvm_pvm, whose KVM EOIs
 * delivered interrupts by itself).
 *  - assert: Remote IRR 1, no interrupt anywhere; deassert: still 1;
 *  - write another vector (0x48) to the EOI register: still 1;
 *  - write 0x47: Remote IRR 0;
 *  - assert again: delivered again (Remote IRR 1), deassert, EOI register: 0.
 * Expected splitvm stats: pin 7 raised 2, delivered 2; no EOI exit.
 */
.include "guest.inc"
.equ PIN, 7
.equ VEC, 0x47
.equ NOBODY, 15

.section .rodata
.globl test_name
test_name: .asciz "ioapic_directed_eoi"

.text
/* remote_irr() -> ebx = RTE 7 Remote IRR bit (0 or RTE_REMOTE_IRR) */
remote_irr:
    mov $PIN, %eax
    call ioapic_rte_low
    mov %eax, %ebx
    and $RTE_REMOTE_IRR, %ebx
    ret

.globl test_main
test_main:
    push %ebx
    mov $PIN, %eax
    mov $(VEC | RTE_LEVEL), %edx
    mov $(NOBODY << 24), %ecx
    call ioapic_set_rte
    call remote_irr
    EXPECT_EQ %ebx, $0, 1, "RTE 7 programmed, Remote IRR 0"

    SET_LINE PIN, 1
    call remote_irr
    EXPECT_EQ %ebx, $RTE_REMOTE_IRR, 2, "assert: delivered (to no CPU), Remote IRR 1"
    SET_LINE PIN, 0
    mov $20, %eax
    call wait_ms                    /* vector 0x47 is not allowed: a stray fails */
    call remote_irr
    EXPECT_EQ %ebx, $RTE_REMOTE_IRR, 3, "deassert: Remote IRR stays 1 without an EOI"
    movl $(VEC + 1), IOAPIC_EOIREG
    call remote_irr
    EXPECT_EQ %ebx, $RTE_REMOTE_IRR, 4, "EOI register with another vector: Remote IRR stays 1"
    movl $VEC, IOAPIC_EOIREG
    call remote_irr
    EXPECT_EQ %ebx, $0, 5, "EOI register with vector 0x47: Remote IRR 0"

    SET_LINE PIN, 1
    call remote_irr
    EXPECT_EQ %ebx, $RTE_REMOTE_IRR, 6, "assert again: delivered again, Remote IRR 1"
    SET_LINE PIN, 0
    movl $VEC, IOAPIC_EOIREG
    call remote_irr
    EXPECT_EQ %ebx, $0, 7, "EOI register again: Remote IRR 0"

    xor %eax, %eax
    pop %ebx
    ret
