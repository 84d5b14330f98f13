/*
 * pic.S - helpers for the 8259 micro-guests.
 */
.include "guest.inc"

.text
/* pic_init(): both chips initialised as Linux does (ICW1 0x11, edge,
 * cascade, ICW4 8086), master vectors PIC_MASTER_BASE, slave
 * PIC_SLAVE_BASE, every input masked but the cascade; then this CPU's
 * LINT0 unmasked in ExtINT mode (virtual wire), so the PIC reaches it. */
.globl pic_init
pic_init:
    mov $0x01, %eax                 /* ICW4: 8086 mode */

/* pic_init_icw4(eax = ICW4 for both chips): pic_init with another ICW4
 * (0x03: 8086 mode with automatic EOI). */
.globl pic_init_icw4
pic_init_icw4:
    push %ebx
    mov %eax, %ebx
    mov $0x11, %al
    outb %al, $PIC1_CMD
    mov $PIC_MASTER_BASE, %al
    outb %al, $PIC1_DATA
    mov $0x04, %al                  /* ICW3: slave on IR2 */
    outb %al, $PIC1_DATA
    mov %bl, %al                    /* ICW4 */
    outb %al, $PIC1_DATA
    mov $0x11, %al
    outb %al, $PIC2_CMD
    mov $PIC_SLAVE_BASE, %al
    outb %al, $PIC2_DATA
    mov $0x02, %al                  /* ICW3: slave ID 2 */
    outb %al, $PIC2_DATA
    mov %bl, %al
    outb %al, $PIC2_DATA
    pop %ebx
    mov $0xfb, %al                  /* all masked but the cascade */
    outb %al, $PIC1_DATA
    mov $0xff, %al
    outb %al, $PIC2_DATA
    mov $APIC_LVT_LINT0, %eax
    mov $0x700, %edx                /* ExtINT, unmasked */
    jmp apic_write

/* pic_eoi(eax = vector): non-specific EOI for a PIC vector: to the slave
 * first when the vector is the slave's, then to the master (which has the
 * cascade, or the IRQ itself, in service). */
.globl pic_eoi
pic_eoi:
    cmp $PIC_SLAVE_BASE, %eax
    mov $PIC_EOI, %al
    jb 1f
    outb %al, $PIC2_CMD
1:  outb %al, $PIC1_CMD
    ret

/* pic_read_isr(eax = 0 master / 1 slave) -> eax = ISR (OCW3 0x0b). */
.globl pic_read_isr
pic_read_isr:
    mov $PIC1_CMD, %dx
    test %eax, %eax
    jz 1f
    mov $PIC2_CMD, %dx
1:  mov $0x0b, %al
    outb %al, %dx
    xor %eax, %eax
    inb %dx, %al
    ret

/* pic_read_irr(eax = 0 master / 1 slave) -> eax = IRR (OCW3 0x0a). */
.globl pic_read_irr
pic_read_irr:
    mov $PIC1_CMD, %dx
    test %eax, %eax
    jz 1f
    mov $PIC2_CMD, %dx
1:  mov $0x0a, %al
    outb %al, %dx
    xor %eax, %eax
    inb %dx, %al
    ret
