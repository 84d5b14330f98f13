/*
 * pic_extint - 8259 delivery as ExtINT through LINT0 of vCPU 0.
 *  1. ICW2 sets the master's vector base to 0x30: an edge on IRQ 5 arrives
 *     as vector 0x35, with ISR bit 5 set in the handler; the handler's
 *     non-specific EOI clears it;
 *  2. IMR masks: with IRQ 5 masked an edge is latched in IRR and nothing is
 *     delivered;
 *  3. unmasking delivers the latched request; this handler ends it with a
 *     specific EOI (OCW2 0x65), which clears ISR.
 * splitvm must show IRQ 5 raised 2, delivered 2, two EOI writes and five
 * IMR writes (two in pic_init), and no spurious interrupt.
 */
.include "guest.inc"
.equ IRQ, 5
.equ VEC, PIC_MASTER_BASE + IRQ

.section .rodata
.globl test_name
test_name: .asciz "pic_extint"

.text
hook:
    xor %eax, %eax
    call pic_read_isr
    mov %eax, isr_seen
    cmpl $0, use_specific
    jne 1f
    mov $PIC_EOI, %al
    outb %al, $PIC1_CMD
    ret
1:  mov $(PIC_SEOI | IRQ), %al
    outb %al, $PIC1_CMD
    ret

.globl test_main
test_main:
    push %ebx
    call pic_init
    mov $VEC, %eax
    mov $hook, %edx
    call irq_set_hook
    mov $(0xfb & ~(1 << IRQ)), %al
    outb %al, $PIC1_DATA

    SET_LINE IRQ, 1
    SET_LINE IRQ, 0
    mov $(irq_count + 4 * VEC), %eax
    mov $1, %edx
    mov $1000, %ecx
    call wait_count
    EXPECT_EQ %eax, $0, 1, "IRQ 5 delivered as vector 0x35 (ICW2 base 0x30)"
    mov isr_seen, %ebx
    EXPECT_EQ %ebx, $(1 << IRQ), 2, "ISR bit 5 set in the handler"
    xor %eax, %eax
    call pic_read_isr
    mov %eax, %ebx
    EXPECT_EQ %ebx, $0, 3, "ISR clear after the non-specific EOI"

    mov $0xfb, %al
    outb %al, $PIC1_DATA
    SET_LINE IRQ, 1
    SET_LINE IRQ, 0
    mov $20, %eax
    call wait_ms
    mov irq_count + 4 * VEC, %ebx
    EXPECT_EQ %ebx, $1, 4, "masked IRQ 5 is not delivered"
    xor %eax, %eax
    call pic_read_irr
    and $(1 << IRQ), %eax
    mov %eax, %ebx
    EXPECT_EQ %ebx, $(1 << IRQ), 5, "the masked edge is latched in IRR"

    movl $1, use_specific
    mov $(0xfb & ~(1 << IRQ)), %al
    outb %al, $PIC1_DATA
    mov $(irq_count + 4 * VEC), %eax
    mov $2, %edx
    mov $1000, %ecx
    call wait_count
    EXPECT_EQ %eax, $0, 6, "unmasking delivers the latched request"
    xor %eax, %eax
    call pic_read_isr
    mov %eax, %ebx
    EXPECT_EQ %ebx, $0, 7, "ISR clear after the specific EOI"
    PRINT_DEC "count: vector 53 taken ", (irq_count+4*VEC)
    pop %ebx
    xor %eax, %eax
    ret

.data
isr_seen:     .long 0
use_specific: .long 0
