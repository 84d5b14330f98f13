/* hello - prints a line on the serial port and exits 0 (README demo). */
.include "guest.inc"

.section .rodata
.globl test_name
test_name: .asciz "hello"

.text
.globl test_main
test_main:
    PRINT "Hello from a splitvm micro-guest!"
    xor %eax, %eax
    ret
