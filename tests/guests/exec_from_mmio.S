/* exec_from_mmio - jumps into the MMIO hole (0xE0000000, nothing mapped):
 * KVM cannot fetch the instruction and stops the vCPU with
 * KVM_EXIT_INTERNAL_ERROR (emulation failure). splitvm must report vCPU,
 * RIP and suberror in one line and exit with status 4, not hang or panic. */
.include "guest.inc"

.section .rodata
.globl test_name
test_name: .asciz "exec_from_mmio"

.text
.globl test_main
test_main:
    PRINT "jumping to 0xe0000000"
    mov $0xe0000000, %eax
    jmp *%eax
