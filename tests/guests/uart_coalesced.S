/*
 * uart_coalesced - COM1's data port (base + 0) is three registers; with
 * `splitvm --coalesced-io on` (the default) a write there does not exit but
 * lands in KVM's coalesced ring, and splitvm must hand the ring to the UART,
 * in order, before anything else can see the UART. The same checks pass
 * with `--coalesced-io off` and under QEMU.
 *
 *  1. Burst: BURST_LINES lines of 64 characters (printable ASCII from '!'
 *     on, cycling) plus "\r\n", written back to back without polling LSR
 *     (this UART's transmitter is never busy): 264 bytes, more than the
 *     ring's 169 free slots, so the ring fills, KVM exits, the writes go on.
 *  2. DLAB: with LCR.DLAB set, base + 0 is DLL. Writes 0x05 then 0x03 to it
 *     (both coalesced) and reads it back (a read exits): 3, the later write.
 *     DLM (base + 1) likewise. Then 0x0c back into DLL (coalesced) and DLAB
 *     cleared (an LCR write, which exits): the divisor is 12 again, and no
 *     divisor byte reached the output.
 *  3. Loopback (MCR bit 4): writes the bytes 0x80..0x87 to THR (coalesced);
 *     LSR then shows data ready, RBR returns them in order, and they never
 *     reach the output.
 *  4. With "snapshot=1" on the command line: loopback again, bytes
 *     0x90..0x97 written to THR, then the ready port (0x2210) is written
 *     (`--snapshot-on-ready` saves the VM there). The original VM and
 *     every VM restored from that snapshot then read the eight bytes back:
 *     a snapshot taken with bytes in the ring keeps them (in the UART's
 *     receive FIFO).
 *  5. With "hang=1": prints LAST_LINE with plain back-to-back writes (no
 *     exit at all), then `cli; hlt` forever. Only splitvm's own drain of
 *     the ring (at least every 10 ms) can make the line appear while the
 *     VM is still running.
 */
.include "guest.inc"
.equ RBR, COM1
.equ THR, COM1
.equ DLL, COM1
.equ DLM, COM1 + 1
.equ FCR, COM1 + 2
.equ LCR, COM1 + 3
.equ MCR, COM1 + 4
.equ LSR, COM1 + 5
.equ LCR_DLAB, 0x80
.equ MCR_LOOP, 0x10
.equ LSR_DR, 0x01
.equ BURST_LINES, 4

.section .rodata
.globl test_name
test_name: .asciz "uart_coalesced"
snapshot_key: .asciz "snapshot="
hang_key: .asciz "hang="
last_line: .asciz "uart_coalesced: the last line before hlt\r\n"

.text
/* write_raw(eax = NUL-terminated string): every byte to THR, back to
 * back, without polling LSR. */
write_raw:
    push %esi
    mov %eax, %esi
    mov $THR, %dx
1:  lodsb
    test %al, %al
    jz 2f
    outb %al, %dx
    jmp 1b
2:  pop %esi
    ret

/* loopback_check(eax = first byte, edx = write the ready port): loopback
 * on, the eight bytes eax..eax+7 to THR, the ready port if edx != 0; then
 * (FIFOs enabled first) LSR.DR must be set, RBR must return the eight bytes in order, and LSR.DR
 * be clear after. Loopback off, then the verdict is printed (nothing can
 * be printed in loopback: it would land in the receive FIFO). */
loopback_check:
    push %ebx
    push %esi
    push %edi
    mov %eax, %ebx
    mov %edx, %esi
    xor %edi, %edi                  /* what went wrong: 0 = nothing */
    mov $FCR, %dx                   /* FIFOs on and empty: a 16550 without */
    mov $0x07, %al                  /* them holds one received byte */
    outb %al, %dx
    mov $MCR, %dx
    inb %dx, %al
    or $MCR_LOOP, %al
    outb %al, %dx
    mov $THR, %dx
    mov %ebx, %eax
    mov $8, %ecx
1:  outb %al, %dx
    inc %al
    loop 1b
    test %esi, %esi
    jz 2f
    mov $READY_PORT, %dx
    outb %al, %dx
2:  mov $LSR, %dx
    inb %dx, %al
    test $LSR_DR, %al
    jnz 3f
    mov $1, %edi                    /* 1: no data ready */
3:  mov $8, %ecx
4:  mov $RBR, %dx
    inb %dx, %al
    cmp %bl, %al
    je 5f
    test %edi, %edi
    jnz 5f
    mov $2, %edi                    /* 2: a byte missing or out of order */
5:  inc %bl
    loop 4b
    mov $LSR, %dx
    inb %dx, %al
    test $LSR_DR, %al
    jz 6f
    test %edi, %edi
    jnz 6f
    mov $3, %edi                    /* 3: more bytes than were written */
6:  mov $MCR, %dx
    inb %dx, %al
    and $~MCR_LOOP, %al
    outb %al, %dx
    EXPECT_EQ %edi, $0, 4, "loopback: eight bytes back in order (1 no data ready, 2 wrong byte, 3 extra bytes)"
    pop %edi
    pop %esi
    pop %ebx
    ret

.globl test_main
test_main:
    push %ebx
    push %esi
    push %edi

    mov $hang_key, %eax
    call cmdline_value
    test %eax, %eax
    jz 1f
    PRINT "uart_coalesced: hanging after the last line"
    mov $last_line, %eax
    call write_raw
    cli
9:  hlt
    jmp 9b

    /* 1. The burst. */
1:  mov $THR, %dx
    mov $'!', %bl
    mov $BURST_LINES, %edi
2:  mov $64, %ecx
3:  mov %bl, %al
    outb %al, %dx
    inc %bl
    cmp $0x7f, %bl
    jne 4f
    mov $'!', %bl
4:  loop 3b
    mov $'\r', %al
    outb %al, %dx
    mov $'\n', %al
    outb %al, %dx
    dec %edi
    jnz 2b

    /* 2. DLAB: DLL and DLM through base + 0 and + 1 (nothing is printed
     * while DLAB is set: a print would write DLL). */
    mov $LCR, %dx
    inb %dx, %al
    movzbl %al, %esi                /* LCR as found */
    or $LCR_DLAB, %al
    outb %al, %dx
    mov $DLL, %dx
    mov $0x05, %al
    outb %al, %dx
    mov $0x03, %al
    outb %al, %dx
    inb %dx, %al
    movzbl %al, %ebx                /* DLL after two coalesced writes */
    mov $DLM, %dx
    mov $0x01, %al
    outb %al, %dx
    inb %dx, %al
    movzbl %al, %edi                /* DLM */
    xor %eax, %eax
    outb %al, %dx
    mov $DLL, %dx
    mov $0x0c, %al
    outb %al, %dx                   /* coalesced, then ... */
    mov $LCR, %dx
    mov %esi, %eax
    outb %al, %dx                   /* ... DLAB off (exits): THR again */
    or $LCR_DLAB, %al
    outb %al, %dx
    mov $DLL, %dx
    inb %dx, %al
    movzbl %al, %eax
    push %eax                       /* DLL after DLAB went off and on */
    mov $LCR, %dx
    mov %esi, %eax
    outb %al, %dx
    EXPECT_EQ %ebx, $3, 1, "DLL reads the last of two coalesced writes"
    EXPECT_EQ %edi, $1, 2, "DLM reads back"
    pop %eax
    EXPECT_EQ %eax, $0x0c, 3, "DLL is 12 again (written coalesced, then DLAB cleared)"

    /* 3. Loopback. */
    mov $0x80, %eax
    xor %edx, %edx
    call loopback_check

    /* 4. Loopback across a snapshot. */
    mov $snapshot_key, %eax
    call cmdline_value
    test %eax, %eax
    jz 5f
    mov $0x90, %eax
    mov $1, %edx
    call loopback_check
    PRINT "uart_coalesced: loopback bytes written before the snapshot read back"

5:  xor %eax, %eax
    pop %edi
    pop %esi
    pop %ebx
    ret
