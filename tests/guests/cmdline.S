/*
 * cmdline - prints the multiboot command line between brackets, as
 * "cmdline: [...]", and exits 0. The test checks that splitvm writes it as
 * QEMU and GRUB do: the image path, a space, then --cmdline.
 */
.include "guest.inc"

.section .rodata
.globl test_name
test_name: .asciz "cmdline"

.text
.globl test_main
test_main:
    push %ebx
    mov mb_info, %ebx
    testl $(1 << 2), (%ebx)         /* flags bit 2: cmdline present */
    jnz 1f
    FAIL 1, "the multiboot info has no command line"
1:  PUTS "cmdline: ["
    mov 16(%ebx), %eax
    call puts
    PRINT "]"
    pop %ebx
    xor %eax, %eax
    ret
