/*
 * runtime.S - entry point, GDT/IDT, interrupt dispatch, serial output and
 * exit for splitvm micro-guests.
 *
 * Boot protocol: Multiboot v1 (ELF32).  The loader enters _start in 32-bit
 * protected mode with flat segments, paging off, interrupts off,
 * EAX = 0x2BADB002 and EBX = physical address of the multiboot info.
 *
 * A test provides:
 *   test_name:  .asciz "..."        (printed in the banner)
 *   test_main:  function; returns the exit code in %eax (0 = pass)
 */
.include "guest.inc"

/* ---------------------------------------------------------------------- */
.section .multiboot, "a"
.align 4
.equ MB_MAGIC, 0x1badb002
.equ MB_FLAGS, 0x00000002           /* bit 1: please pass memory information */
multiboot_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

/* ---------------------------------------------------------------------- */
.text
.code32
.globl _start
_start:
    cli
    cld
    mov %eax, %esi                  /* multiboot magic */
    mov %ebx, %ebp                  /* multiboot info */
    lgdt gdt_desc
    ljmp $KERNEL_CS, $1f
1:  mov $KERNEL_DS, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    /* Zero .bss (includes the stacks) before using it. */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    shr $2, %ecx
    xor %eax, %eax
    rep stosl
    mov $(stacks + STACK_SIZE), %esp
    mov %esi, mb_magic
    mov %ebp, mb_info

    call idt_init
    lidt idt_desc

    mov $banner_str, %eax
    call puts
    mov $test_name, %eax
    call puts
    mov $banner_end_str, %eax
    call puts

    cmpl $0x2badb002, mb_magic
    je 2f
    FAIL EXIT_BAD_MAGIC, "bad multiboot magic in EAX"
2:
    call apic_init_cpu
    call apic_id
    mov %eax, cpu_apic_id           /* cpu_apic_id[0] */

    call test_main
    test %eax, %eax
    jnz 3f
    PRINT "PASS"
    xor %eax, %eax
3:  jmp exit

/*
 * exit(eax = code): write code to the isa-debug-exit port (the VMM ends
 * with status (code << 1) | 1).  Never returns.
 */
.globl exit
exit:
    cli
    mov $DEBUG_EXIT_PORT, %dx
    outl %eax, %dx
1:  hlt
    jmp 1b

/* fail(eax = code, edx = message): print "FAIL: message (code N)" and exit. */
.globl fail
fail:
    cli
    mov %eax, %ebx
    mov %edx, %esi
    mov $fail_str, %eax
    call puts
    mov %esi, %eax
    call puts
    mov $code_str, %eax
    call puts
    mov %ebx, %eax
    call puthex
    mov $close_str, %eax
    call puts
    mov %ebx, %eax
    jmp exit

/*
 * expect_eq(actual, expected, code, msg) - cdecl, all four on the stack.
 * Prints "ok: msg" on success; otherwise prints the values and exits.
 */
.globl expect_eq
expect_eq:
    push %ebx
    push %esi
    mov 12(%esp), %eax              /* actual */
    cmp 16(%esp), %eax              /* expected */
    jne 1f
    mov $ok_str, %eax
    call puts
    mov 24(%esp), %eax
    call puts
    mov $nl_str, %eax
    call puts
    pop %esi
    pop %ebx
    ret
1:  mov $fail_str, %eax
    call puts
    mov 24(%esp), %eax
    call puts
    mov $got_str, %eax
    call puts
    mov 12(%esp), %eax
    call puthex
    mov $expected_str, %eax
    call puts
    mov 16(%esp), %eax
    call puthex
    mov $nl_str, %eax
    call puts
    mov 20(%esp), %eax
    jmp exit

/* ---------------------------------------------------------------------- */
/* Serial output: 8250 at COM1, polled (LSR bit 5 = THR empty). */

/* putc(al) */
.globl putc
putc:
    mov %eax, %ecx
    mov $(COM1 + 5), %dx
1:  inb %dx, %al
    test $0x20, %al
    jz 1b
    mov %ecx, %eax
    mov $COM1, %dx
    outb %al, %dx
    ret

/* puts(eax = NUL-terminated string); "\n" is sent as "\r\n". */
.globl puts
puts:
    push %esi
    mov %eax, %esi
1:  movzbl (%esi), %eax
    test %al, %al
    jz 2f
    cmp $'\n', %al
    jne 3f
    mov $'\r', %al
    call putc
    mov $'\n', %al
3:  call putc
    inc %esi
    jmp 1b
2:  pop %esi
    ret

/* puthex(eax): "0x" and 8 hex digits. */
.globl puthex
puthex:
    push %ebx
    push %esi
    mov %eax, %ebx
    mov $'0', %al
    call putc
    mov $'x', %al
    call putc
    mov $8, %esi
1:  rol $4, %ebx
    mov %ebx, %eax
    and $0xf, %eax
    movzbl hex_digits(%eax), %eax
    call putc
    dec %esi
    jnz 1b
    pop %esi
    pop %ebx
    ret

/* putdec(eax): unsigned decimal. */
.globl putdec
putdec:
    push %ebx
    push %esi
    mov %esp, %esi                  /* digits are pushed, then printed */
    mov $10, %ebx
1:  xor %edx, %edx
    div %ebx
    add $'0', %edx
    push %edx
    test %eax, %eax
    jnz 1b
2:  cmp %esi, %esp
    je 3f
    pop %eax
    call putc
    jmp 2b
3:  pop %esi
    pop %ebx
    ret

/* ---------------------------------------------------------------------- */
/* IDT: 256 interrupt gates to 16-byte stubs that push (error, vector). */

idt_init:
    mov $isr_stubs, %eax
    xor %ecx, %ecx
1:  mov %eax, %edx
    and $0xffff, %edx
    or $(KERNEL_CS << 16), %edx
    mov %edx, idt(,%ecx,8)          /* offset 15:0, selector */
    mov %eax, %edx
    and $0xffff0000, %edx
    or $0x8e00, %edx                /* present, DPL 0, 32-bit interrupt gate */
    mov %edx, idt+4(,%ecx,8)
    add $16, %eax
    inc %ecx
    cmp $256, %ecx
    jne 1b
    /* The runtime's own vectors. */
    movb $1, irq_allowed + SPURIOUS_VECTOR
    movl $tick_handler, irq_hook + 4 * TICK_VECTOR
    ret

.align 16
isr_stubs:
.set vec, 0
.rept 256
    .align 16
    .if !((vec == 8) | ((vec >= 10) & (vec <= 14)) | (vec == 17) | (vec == 21) | (vec == 29) | (vec == 30))
    pushl $0
    .endif
    pushl $vec
    jmp isr_common
    .set vec, vec + 1
.endr

/*
 * Stack on entry: vector, error code, eip, cs, eflags.
 * Vectors < 32 are exceptions and fail the test.  Other vectors bump
 * irq_count[cpu][vector]; then the vector's hook runs if it has one
 * (hook(eax = vector, edx = cpu); the hook does its own EOI), otherwise
 * the runtime EOIs (except for the spurious vector).  A vector with neither
 * a hook nor irq_allowed[vector] set fails the test as a stray interrupt.
 */
isr_common:
    pusha
    mov 32(%esp), %eax              /* vector */
    cmp $32, %eax
    jb isr_exception
    mov %esp, %edx
    sub $stacks, %edx
    shr $12, %edx                   /* cpu index */
    mov %edx, %ecx
    shl $8, %ecx
    add %eax, %ecx
    lock incl irq_count(,%ecx,4)
    mov irq_hook(,%eax,4), %ebx
    test %ebx, %ebx
    jz 1f
    call *%ebx
    jmp 3f
1:  cmpb $0, irq_allowed(%eax)
    je isr_stray
    cmp $SPURIOUS_VECTOR, %eax
    je 3f
    call apic_eoi
3:  popa
    add $8, %esp
    IRET_FREE

isr_stray:
    mov %eax, %ebx
    mov %edx, %esi
    mov $stray_str, %eax
    call puts
    mov %ebx, %eax
    call puthex
    mov $oncpu_str, %eax
    call puts
    mov %esi, %eax
    call putdec
    mov $nl_str, %eax
    call puts
    mov $EXIT_STRAY_IRQ, %eax
    jmp exit

isr_exception:
    mov $exc_str, %eax
    call puts
    mov 32(%esp), %eax
    call puthex
    mov $err_str, %eax
    call puts
    mov 36(%esp), %eax
    call puthex
    mov $eip_str, %eax
    call puts
    mov 40(%esp), %eax
    call puthex
    mov $nl_str, %eax
    call puts
    mov $EXIT_EXCEPTION, %eax
    jmp exit

/* cmdline_value(eax = "key=" string) -> eax = the decimal number that
 * follows the first "key=" on the multiboot command line, edx = 1 if there
 * is one (else 0, eax 0). (The command line starts with the image path, so
 * a bare number would be ambiguous.) */
.globl cmdline_value
cmdline_value:
    push %ebx
    push %esi
    push %edi
    mov %eax, %ebx              /* the key */
    mov mb_info, %esi
    test %esi, %esi
    jz 8f
    testl $4, (%esi)
    jz 8f
    mov 16(%esi), %esi          /* the command line */
1:  cmpb $0, (%esi)
    je 8f
    mov %esi, %edi              /* does the key start here? */
    mov %ebx, %ecx
2:  movb (%ecx), %al
    test %al, %al
    jz 3f                       /* the whole key matched */
    cmpb %al, (%edi)
    jne 7f
    inc %ecx
    inc %edi
    jmp 2b
3:  xor %eax, %eax              /* digits after it */
    xor %ecx, %ecx
4:  movzbl (%edi), %edx
    sub $'0', %edx
    cmp $9, %edx
    ja 5f
    imul $10, %eax, %eax
    add %edx, %eax
    inc %edi
    mov $1, %ecx
    jmp 4b
5:  mov %ecx, %edx
    jmp 9f
7:  inc %esi
    jmp 1b
8:  xor %eax, %eax
    xor %edx, %edx
9:  pop %edi
    pop %esi
    pop %ebx
    ret

/* irq_set_hook(eax = vector, edx = function) */
.globl irq_set_hook
irq_set_hook:
    mov %edx, irq_hook(,%eax,4)
    ret

/* irq_allow(eax = vector): default handling (count + EOI) for the vector. */
.globl irq_allow
irq_allow:
    movb $1, irq_allowed(%eax)
    ret

/* ---------------------------------------------------------------------- */
.section .rodata
.align 8
.globl gdt
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff            /* 0x08: flat 32-bit code */
    .quad 0x00cf92000000ffff            /* 0x10: flat 32-bit data */
gdt_end:
.globl gdt_desc
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt
idt_desc:
    .word 256 * 8 - 1
    .long idt

hex_digits:     .ascii "0123456789abcdef"
banner_str:     .asciz "== splitvm micro-guest: "
banner_end_str: .asciz " ==\n"
fail_str:       .asciz "FAIL: "
ok_str:         .asciz "ok: "
code_str:       .asciz " (code "
close_str:      .asciz ")\n"
got_str:        .asciz ": got "
expected_str:   .asciz " expected "
nl_str:         .asciz "\n"
stray_str:      .asciz "FAIL: unexpected interrupt vector "
oncpu_str:      .asciz " on cpu "
exc_str:        .asciz "FAIL: CPU exception "
err_str:        .asciz " error "
eip_str:        .asciz " at eip "

/* ---------------------------------------------------------------------- */
.section .data
.globl mb_magic, mb_info
mb_magic:   .long 0
mb_info:    .long 0

.section .bss
.align 4096
.globl stacks
stacks:     .skip MAX_CPUS * STACK_SIZE
.align 8
.globl idt
idt:        .skip 256 * 8
.globl irq_count
irq_count:  .skip MAX_CPUS * 256 * 4    /* [cpu][vector] */
.globl irq_hook
irq_hook:   .skip 256 * 4
irq_allowed: .skip 256
.globl cpu_apic_id
cpu_apic_id: .skip MAX_CPUS * 4
