/*
 * snapshot_mid_test - interrupt state that must survive a snapshot.
 *
 * Sets up, with interrupts disabled:
 *  - the PIT in periodic mode (counter 0, mode 2, 100 Hz) on I/O APIC pin 2
 *    (ISA IRQ 0), vector 0x30, edge;
 *  - a level interrupt in flight: pin 11 (vector 0x41, level) asserted, so
 *    the I/O APIC has delivered it (Remote IRR 1) and it waits in the LAPIC
 *    (IF = 0);
 *  - a masked level pin with its line high: pin 12 (vector 0x42);
 *  - the LAPIC timer armed, one-shot, 20 ms (vector 0x60);
 * then writes the ready port (0x2210): under `splitvm run
 * --snapshot-on-ready DIR` the snapshot is taken here.  The same code then
 * runs in the original VM and in every VM restored from that snapshot:
 *  1. deassert pin 11 and enable interrupts: vector 0x41 is taken once;
 *     its EOI clears Remote IRR (line low: no second delivery);
 *  2. the LAPIC timer fires once; the PIT goes on ticking (5 more ticks);
 *  3. unmask pin 12: its line is still high, so it is delivered (its hook
 *     deasserts the line and EOIs);
 *  4. after 10 more PIT ticks: 0x41 taken exactly once, 0x60 once, 0x42
 *     once (at least once on hosts whose LAPIC retires vectors itself,
 *     see level_ioapic.S), Remote IRR of pins 11 and 12 clear.
 * Waits are bounded by PIT ticks (the LAPIC timer is under test).
 * Reports "count: vector V taken N" for 0x30, 0x41, 0x42 and 0x60.
 */
.include "guest.inc"
.equ VEC_PIT, 0x30
.equ VEC_LEVEL, 0x41
.equ VEC_MASKED, 0x42
.equ VEC_TIMER, 0x60
.equ PIN_PIT, 2
.equ PIN_LEVEL, 11
.equ PIN_MASKED, 12
.equ PIT_COUNT, 11932               /* 1193182 Hz / 100 */

.section .rodata
.globl test_name
test_name: .asciz "snapshot_mid_test"

.text
/* Pin 12's hook: deassert, then EOI. */
masked_hook:
    SET_LINE PIN_MASKED, 0
    jmp apic_eoi

/* until(eax = counter, edx = target): sti; hlt until *counter >= target,
 * at most 300 PIT ticks (3 s); eax = 0, or 1 on timeout.  IF = 0 after. */
until:
    push %ebx
    push %esi
    push %edi
    mov %eax, %ebx
    mov %edx, %esi
    mov irq_count + 4 * VEC_PIT, %edi
    add $300, %edi
1:  cli
    cmp %esi, (%ebx)
    jae 2f
    cmp %edi, irq_count + 4 * VEC_PIT
    jae 3f
    sti
    hlt
    jmp 1b
2:  xor %eax, %eax
    jmp 4f
3:  mov $1, %eax
4:  pop %edi
    pop %esi
    pop %ebx
    ret

/* more_ticks(eax = n): until() n more PIT ticks. */
more_ticks:
    mov %eax, %edx
    add irq_count + 4 * VEC_PIT, %edx
    mov $(irq_count + 4 * VEC_PIT), %eax
    jmp until

.globl test_main
test_main:
    push %ebx
    push %esi
    call detect_auto_eoi
    mov $VEC_PIT, %eax
    call irq_allow
    mov $VEC_LEVEL, %eax
    call irq_allow
    mov $VEC_TIMER, %eax
    call irq_allow
    mov $VEC_MASKED, %eax
    mov $masked_hook, %edx
    call irq_set_hook

    /* PIT: pin 2 edge, then counter 0 mode 2 (rate generator), 100 Hz. */
    mov $PIN_PIT, %eax
    mov $VEC_PIT, %edx
    mov cpu_apic_id, %ecx
    shl $24, %ecx
    call ioapic_set_rte
    mov $0x34, %al
    outb %al, $PIT_MODE
    mov $(PIT_COUNT & 0xff), %al
    outb %al, $PIT_CH0
    mov $(PIT_COUNT >> 8), %al
    outb %al, $PIT_CH0
    mov $(irq_count + 4 * VEC_PIT), %eax
    mov $2, %edx
    call until
    EXPECT_EQ %eax, $0, 1, "the PIT ticks before the snapshot point"

    /* A level interrupt in flight, held in the LAPIC by IF = 0. */
    cli
    mov $PIN_LEVEL, %eax
    mov $(VEC_LEVEL | RTE_LEVEL), %edx
    mov cpu_apic_id, %ecx
    shl $24, %ecx
    call ioapic_set_rte
    SET_LINE PIN_LEVEL, 1
    mov $PIN_LEVEL, %eax
    call ioapic_rte_low
    and $RTE_REMOTE_IRR, %eax
    EXPECT_EQ %eax, $RTE_REMOTE_IRR, 2, "Remote IRR of the delivered level pin is 1"

    /* A masked level pin with its line high. */
    mov $PIN_MASKED, %eax
    mov $(VEC_MASKED | RTE_LEVEL | RTE_MASKED), %edx
    mov cpu_apic_id, %ecx
    shl $24, %ecx
    call ioapic_set_rte
    SET_LINE PIN_MASKED, 1

    /* The LAPIC timer, one-shot, 20 ms at KVM's 1 GHz APIC bus. */
    mov $APIC_TDCR, %eax
    mov $0xb, %edx
    call apic_write
    mov $APIC_LVT_TIMER, %eax
    mov $VEC_TIMER, %edx
    call apic_write
    mov $APIC_TMICT, %eax
    mov $20000000, %edx
    call apic_write

    PRINT "snapshot point"
    mov $READY_PORT, %dx
    outb %al, %dx
    PRINT "running on after the snapshot point"

    /* 1. The level interrupt in flight: taken once, its EOI ends it. */
    SET_LINE PIN_LEVEL, 0
    mov $(irq_count + 4 * VEC_LEVEL), %eax
    mov $1, %edx
    call until
    EXPECT_EQ %eax, $0, 3, "the level interrupt in flight is taken"
    mov $PIN_LEVEL, %eax
    call ioapic_rte_low
    and $RTE_REMOTE_IRR, %eax
    EXPECT_EQ %eax, $0, 4, "its EOI cleared Remote IRR"

    /* 2. The LAPIC timer fires; the PIT keeps ticking. */
    mov $(irq_count + 4 * VEC_TIMER), %eax
    mov $1, %edx
    call until
    EXPECT_EQ %eax, $0, 5, "the LAPIC timer armed before the snapshot fires"
    mov $5, %eax
    call more_ticks
    EXPECT_EQ %eax, $0, 6, "the periodic PIT keeps ticking"

    /* 3. The masked pin, line still high: delivered on unmask. */
    mov $PIN_MASKED, %eax
    call ioapic_unmask
    mov $(irq_count + 4 * VEC_MASKED), %eax
    mov $1, %edx
    call until
    EXPECT_EQ %eax, $0, 7, "the masked level pin is delivered on unmask"

    /* 4. Nothing more. */
    mov $10, %eax
    call more_ticks
    EXPECT_EQ %eax, $0, 8, "10 more PIT ticks"
    EXPECT_EQ irq_count+4*VEC_LEVEL, $1, 9, "the level interrupt was taken exactly once"
    EXPECT_EQ irq_count+4*VEC_TIMER, $1, 10, "the one-shot LAPIC timer fired exactly once"
    cmpl $0, lapic_auto_eoi
    jne 1f
    EXPECT_EQ irq_count+4*VEC_MASKED, $1, 11, "the unmasked pin was delivered exactly once"
1:  mov $PIN_MASKED, %eax
    call ioapic_rte_low
    and $RTE_REMOTE_IRR, %eax
    EXPECT_EQ %eax, $0, 12, "Remote IRR of the unmasked pin is clear"

    /* Stop the PIT (mode 0, no count: no further interrupt). */
    mov $PIN_PIT, %eax
    call ioapic_mask
    mov $VEC_PIT, %eax
    call report_count
    mov $VEC_LEVEL, %eax
    call report_count
    mov $VEC_MASKED, %eax
    call report_count
    mov $VEC_TIMER, %eax
    call report_count
    xor %eax, %eax
    pop %esi
    pop %ebx
    ret
