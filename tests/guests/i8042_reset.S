/* i8042_reset - resets the machine through the keyboard controller (command
 * 0xFE on port 0x64, as Linux does with reboot=k): splitvm must end the VM
 * with status 0. Never returns; reaching the exit path below is a failure. */
.include "guest.inc"

.section .rodata
.globl test_name
test_name: .asciz "i8042_reset"

.text
.globl test_main
test_main:
    PRINT "resetting through the i8042"
1:  inb $0x64, %al          /* wait for the input buffer to be empty */
    testb $2, %al
    jnz 1b
    movb $0xfe, %al
    outb %al, $0x64
    FAIL 1, "still running after the i8042 reset command"
