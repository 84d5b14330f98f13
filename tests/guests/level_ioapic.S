/*
 * level_ioapic - a level-triggered, active-high I/O APIC pin (11, vector
 * 0x41, fixed, physical destination = BSP).
 *
 * On a LAPIC that keeps the vector in service until the guest's EOI
 * (VMX/SVM hosts):
 *  1. assert the line: one interrupt; the handler does not EOI; Remote IRR
 *     (RTE bit 14) reads 1 in the handler and still after 20 ms, and no
 *     second interrupt comes;
 *  2. EOI with the line still high: the I/O APIC delivers again; that
 *     handler sees Remote IRR 1, deasserts the line, then EOIs;
 *  3. no further interrupt; Remote IRR reads 0.
 * On this project's kvm_pvm hosts KVM retires the vector by itself soon
 * after injecting it (detect_auto_eoi), so the guest cannot hold it in
 * service: every delivery is followed by an EOI exit and, while the line
 * is high, by another delivery.  There the guest checks: the interrupt
 * comes, Remote IRR reads 1 in the first handler, the I/O APIC delivers
 * again while the line stays high (at least 2 interrupts); after the
 * guest deasserts the line no further interrupt comes; Remote IRR reads 0.
 * The guest reports "count: vector 65 taken N" (N = 2 on VMX/SVM, N >= 2
 * on kvm_pvm); splitvm must show pin 11 raised 1, delivered N, eoi N and N
 * EOI exits for vector 65.
 */
.include "guest.inc"
.equ PIN, 11
.equ VEC, 0x41

.section .rodata
.globl test_name
test_name: .asciz "level_ioapic"

.text
/* hook(eax = vector, edx = cpu): record the RTE low word; EOI (and
 * deassert first) from the 2nd interrupt on, or always on auto-EOI hosts. */
level_hook:
    push %ebx
    mov irq_count + 4 * VEC, %ebx
    mov $PIN, %eax
    call ioapic_rte_low
    cmp $4, %ebx
    ja 1f
    mov %eax, rte_seen - 4(,%ebx,4)
1:  cmpl $0, lapic_auto_eoi
    jne 3f                          /* main deasserts; EOI is the host's */
    cmp $2, %ebx
    jb 3f
    SET_LINE PIN, 0
    call apic_eoi
3:  pop %ebx
    ret

.globl test_main
test_main:
    push %ebx
    call detect_auto_eoi
    mov $VEC, %eax
    mov $level_hook, %edx
    call irq_set_hook
    mov $PIN, %eax
    mov $(VEC | RTE_LEVEL), %edx
    mov cpu_apic_id, %ecx
    shl $24, %ecx
    call ioapic_set_rte
    mov $PIN, %eax
    call ioapic_rte_low
    mov %eax, %ebx
    EXPECT_EQ %ebx, $(VEC|RTE_LEVEL), 1, "RTE 11 reads back level, unmasked, Remote IRR 0"

    SET_LINE PIN, 1
    mov $(irq_count + 4 * VEC), %eax
    mov $1, %edx
    mov $2000, %ecx
    call wait_count
    EXPECT_EQ %eax, $0, 2, "level interrupt delivered on assert"
    mov rte_seen, %ebx
    and $RTE_REMOTE_IRR, %ebx
    EXPECT_EQ %ebx, $RTE_REMOTE_IRR, 3, "Remote IRR reads 1 in the handler"
    cmpl $0, lapic_auto_eoi
    jne 5f

    mov $20, %eax
    call wait_ms
    EXPECT_EQ irq_count+4*VEC, $1, 4, "no second interrupt while in service (no EOI yet)"
    mov $PIN, %eax
    call ioapic_rte_low
    mov %eax, %ebx
    and $RTE_REMOTE_IRR, %ebx
    EXPECT_EQ %ebx, $RTE_REMOTE_IRR, 5, "Remote IRR still 1 before the EOI"
    call apic_eoi                   /* line still high */
    mov $(irq_count + 4 * VEC), %eax
    mov $2, %edx
    mov $2000, %ecx
    call wait_count
    EXPECT_EQ %eax, $0, 6, "EOI with the line high re-delivers (second interrupt)"
    mov rte_seen + 4, %ebx
    and $RTE_REMOTE_IRR, %ebx
    EXPECT_EQ %ebx, $RTE_REMOTE_IRR, 7, "Remote IRR reads 1 in the second handler"
    jmp 6f

    mov $20, %eax
    call wait_ms
    EXPECT_EQ irq_count+4*VEC, $2, 9, "deassert then EOI: no further interrupt"
    jmp 6f

5:  mov $(irq_count + 4 * VEC), %eax
    mov $2, %edx
    mov $2000, %ecx
    call wait_count
    EXPECT_EQ %eax, $0, 8, "EOI (by the host) with the line high re-delivers (second interrupt)"
    SET_LINE PIN, 0
    mov $20, %eax
    call wait_ms                    /* takes what was in flight */
    mov irq_count + 4 * VEC, %ebx
    mov $20, %eax
    call wait_ms
    EXPECT_EQ irq_count+4*VEC, %ebx, 11, "line deasserted: no further interrupt"

6:
    mov $PIN, %eax
    call ioapic_rte_low
    mov %eax, %ebx
    and $RTE_REMOTE_IRR, %ebx
    EXPECT_EQ %ebx, $0, 10, "Remote IRR reads 0 after the EOI"
    mov $VEC, %eax
    call report_count

    xor %eax, %eax
    pop %ebx
    ret

.section .bss
rte_seen: .skip 16                  /* RTE low word seen by handler 1..4 */
