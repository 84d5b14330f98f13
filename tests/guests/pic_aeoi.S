/*
 * pic_aeoi - 8259 in automatic-EOI mode with two requests pending.
 * ICW4 = 0x03 (8086, AEOI): an acknowledged request is not held in ISR, so
 * a second pending request is presented at once. With IF = 0 the guest
 * raises IRQ 3 and IRQ 4 (edges through pc-testdev), then waits in a
 * `sti; hlt` loop (wait_count). Both must be delivered, IRQ 3 first, in
 * each of ROUNDS rounds. The handlers touch no port: nothing but the PIC's
 * own output may bring vCPU 0 out of KVM_RUN for the second one (a VMM
 * that stops asking for an interrupt window after the first INTA, while
 * the output stays high, never delivers it and the guest times out).
 */
.include "guest.inc"
.equ VEC3, PIC_MASTER_BASE + 3
.equ VEC4, PIC_MASTER_BASE + 4
.equ ROUNDS, 50

.section .rodata
.globl test_name
test_name: .asciz "pic_aeoi"

.text
/* No EOI in AEOI mode, no port access at all; remember the order. */
hook3:
    cmpl $0, first
    jne 1f
    movl $3, first
1:  ret
hook4:
    cmpl $0, first
    jne 1f
    movl $4, first
1:  ret

.globl test_main
test_main:
    push %ebx
    push %esi
    mov $0x03, %eax                 /* ICW4: 8086 mode, automatic EOI */
    call pic_init_icw4
    mov $VEC3, %eax
    mov $hook3, %edx
    call irq_set_hook
    mov $VEC4, %eax
    mov $hook4, %edx
    call irq_set_hook
    mov $(0xfb & ~(1 << 3) & ~(1 << 4)), %al
    outb %al, $PIC1_DATA

    mov $1, %esi
1:  cli
    movl $0, first
    SET_LINE 3, 0
    SET_LINE 4, 0
    SET_LINE 3, 1
    SET_LINE 4, 1
    mov $(irq_count + 4 * VEC4), %eax
    mov %esi, %edx
    mov $1000, %ecx
    call wait_count
    EXPECT_EQ %eax, $0, 1, "the second pending request (IRQ 4) is delivered"
    mov irq_count + 4 * VEC3, %ebx
    EXPECT_EQ %ebx, %esi, 2, "IRQ 3 delivered once per round"
    mov first, %ebx
    EXPECT_EQ %ebx, $3, 3, "IRQ 3 (higher priority) first"
    inc %esi
    cmp $ROUNDS, %esi
    jbe 1b

    xor %eax, %eax
    call pic_read_isr
    mov %eax, %ebx
    EXPECT_EQ %ebx, $0, 4, "ISR empty: automatic EOI"
    PRINT_DEC "count: vector 51 taken ", (irq_count+4*VEC3)
    PRINT_DEC "count: vector 52 taken ", (irq_count+4*VEC4)
    pop %esi
    pop %ebx
    xor %eax, %eax
    ret

.data
first: .long 0
