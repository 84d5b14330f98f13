/*
 * mask_unmask_level - a masked level pin holds its interrupt until unmasked.
 * Pin 5, level, active high, vector 0x43, physical destination = BSP.
 * Masked + line asserted: nothing, Remote IRR 0.  Unmask with the line still
 * high: delivered; the handler deasserts the line and EOIs; then nothing.
 * Interrupts taken: 1; on hosts whose KVM EOIs at injection (kvm_pvm, see
 * level_ioapic) 1 or 2, depending on whether that EOI exit comes before or
 * after the handler's deassert.  Reported as
 * "count: vector 67 taken N"; splitvm must show pin 5 raised 1, delivered N,
 * eoi N and N EOI exits for vector 67.
 */
.include "guest.inc"
.equ PIN, 5
.equ VEC, 0x43

.section .rodata
.globl test_name
test_name: .asciz "mask_unmask_level"

.text
level_hook:
    SET_LINE PIN, 0
    jmp apic_eoi

.globl test_main
test_main:
    push %ebx
    call detect_auto_eoi
    mov $VEC, %eax
    mov $level_hook, %edx
    call irq_set_hook
    /* Program the RTE unmasked while the line is low, then mask it: the
     * unmask below changes only the mask bit.  (QEMU 7.2's split-irqchip
     * I/O APIC re-delivers on an RTE write before it updates the KVM route
     * of the pin, so an RTE that was never unmasked would be delivered
     * through a stale route there.) */
    mov $PIN, %eax
    mov $(VEC | RTE_LEVEL), %edx
    mov cpu_apic_id, %ecx
    shl $24, %ecx
    call ioapic_set_rte
    mov $PIN, %eax
    call ioapic_mask

    SET_LINE PIN, 1
    mov $20, %eax
    call wait_ms
    EXPECT_EQ irq_count+4*VEC, $0, 1, "masked level pin with the line high: no interrupt"
    mov $PIN, %eax
    call ioapic_rte_low
    mov %eax, %ebx
    and $RTE_REMOTE_IRR, %ebx
    EXPECT_EQ %ebx, $0, 2, "Remote IRR 0 while masked"

    mov $PIN, %eax
    call ioapic_unmask
    mov $(irq_count + 4 * VEC), %eax
    mov $1, %edx
    mov $2000, %ecx
    call wait_count
    EXPECT_EQ %eax, $0, 3, "unmask with the line high delivers"
    mov $20, %eax
    call wait_ms
    cmpl $0, lapic_auto_eoi
    jne 1f
    EXPECT_EQ irq_count+4*VEC, $1, 4, "exactly one interrupt (deassert + EOI in the handler)"
    jmp 2f
1:  mov irq_count + 4 * VEC, %ebx   /* 1 or 2: see the header */
    dec %ebx
    cmp $2, %ebx
    setb %bl
    movzbl %bl, %ebx
    EXPECT_EQ %ebx, $1, 6, "one or two interrupts (EOI at injection), then no further one"
2:
    mov $PIN, %eax
    call ioapic_rte_low
    mov %eax, %ebx
    and $RTE_REMOTE_IRR, %ebx
    EXPECT_EQ %ebx, $0, 5, "Remote IRR 0 after deassert + EOI"
    mov $VEC, %eax
    call report_count

    xor %eax, %eax
    pop %ebx
    ret
