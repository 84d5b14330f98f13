/*
 * pic_level - a level-triggered input (ELCR) on the slave, through the
 * cascade: IRQ 10 (vector 0x3a) held high is delivered, and after its EOIs
 * (slave, then master for the cascade) delivered again while the line is
 * still high; the second handler lowers the line before its EOIs, and no
 * third interrupt comes.
 * splitvm must show IRQ 10 raised 1, delivered 2, four EOI writes.
 */
.include "guest.inc"
.equ IRQ, 10
.equ VEC, PIC_SLAVE_BASE + IRQ - 8

.section .rodata
.globl test_name
test_name: .asciz "pic_level"

.text
hook:
    cmpl $2, irq_count + 4 * VEC
    jb 1f
    SET_LINE IRQ, 0
1:  xor %eax, %eax
    call pic_read_isr
    mov %eax, master_isr
    mov $VEC, %eax
    jmp pic_eoi

.globl test_main
test_main:
    push %ebx
    call pic_init
    mov $VEC, %eax
    mov $hook, %edx
    call irq_set_hook
    mov $(1 << (IRQ - 8)), %al
    mov $ELCR2, %dx
    outb %al, %dx
    inb %dx, %al
    movzbl %al, %ebx
    EXPECT_EQ %ebx, $(1 << (IRQ - 8)), 1, "ELCR2 reads back IRQ 10 level"
    mov $(0xff & ~(1 << (IRQ - 8))), %al
    outb %al, $PIC2_DATA

    SET_LINE IRQ, 1
    mov $(irq_count + 4 * VEC), %eax
    mov $2, %edx
    mov $1000, %ecx
    call wait_count
    EXPECT_EQ %eax, $0, 2, "the level request is delivered again while high"
    mov master_isr, %ebx
    EXPECT_EQ %ebx, $(1 << 2), 3, "the cascade (IR2) is in service on the master"
    mov $20, %eax
    call wait_ms
    mov irq_count + 4 * VEC, %ebx
    EXPECT_EQ %ebx, $2, 4, "no delivery once the line is low"
    PRINT_DEC "count: vector 58 taken ", (irq_count+4*VEC)
    pop %ebx
    xor %eax, %eax
    ret

.data
master_isr: .long 0
