/*
 * pic_priority - fully nested priority between pending requests. With
 * interrupts off, edges on IRQ 6 and IRQ 3 (master) and IRQ 12 (slave)
 * are latched; once interrupts are on they arrive highest priority first:
 * IRQ 12 (through the cascade on IR2, which outranks IR3), then IRQ 3,
 * then IRQ 6. Each handler ends its interrupt with non-specific EOIs.
 * splitvm must show each IRQ raised 1 and delivered 1, and the interrupt
 * window exits it took to deliver while the guest had interrupts off.
 */
.include "guest.inc"

.section .rodata
.globl test_name
test_name: .asciz "pic_priority"

.text
hook:
    mov order_n, %ecx
    mov %al, order(%ecx)
    incl order_n
    jmp pic_eoi

.globl test_main
test_main:
    push %ebx
    call pic_init
    mov $(PIC_MASTER_BASE + 3), %eax
    mov $hook, %edx
    call irq_set_hook
    mov $(PIC_MASTER_BASE + 6), %eax
    mov $hook, %edx
    call irq_set_hook
    mov $(PIC_SLAVE_BASE + 4), %eax
    mov $hook, %edx
    call irq_set_hook
    cli
    mov $(0xfb & ~(1 << 3) & ~(1 << 6)), %al
    outb %al, $PIC1_DATA
    mov $(0xff & ~(1 << 4)), %al
    outb %al, $PIC2_DATA
    SET_LINE 6, 1
    SET_LINE 6, 0
    SET_LINE 3, 1
    SET_LINE 3, 0
    SET_LINE 12, 1
    SET_LINE 12, 0
    mov $order_n, %eax
    mov $3, %edx
    mov $1000, %ecx
    call wait_count
    EXPECT_EQ %eax, $0, 1, "three interrupts once interrupts are on"
    movzbl order, %ebx
    EXPECT_EQ %ebx, $(PIC_SLAVE_BASE + 4), 2, "first: IRQ 12 via the cascade (IR2 > IR3)"
    movzbl order + 1, %ebx
    EXPECT_EQ %ebx, $(PIC_MASTER_BASE + 3), 3, "second: IRQ 3"
    movzbl order + 2, %ebx
    EXPECT_EQ %ebx, $(PIC_MASTER_BASE + 6), 4, "third: IRQ 6"
    pop %ebx
    xor %eax, %eax
    ret

.data
order_n: .long 0
order:   .byte 0, 0, 0, 0
