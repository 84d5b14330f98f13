/* triple_fault - loads an empty IDT and raises #UD: the exception cannot be
 * delivered (#UD -> #GP -> #DF -> shutdown), KVM reports KVM_EXIT_SHUTDOWN,
 * and splitvm ends the VM as a reset (status 0). */
.include "guest.inc"

.section .rodata
.globl test_name
test_name: .asciz "triple_fault"
empty_idt:
    .word 0
    .long 0

.text
.globl test_main
test_main:
    PRINT "triple faulting"
    lidt empty_idt
    ud2
    FAIL 1, "survived a triple fault"
