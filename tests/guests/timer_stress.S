/*
 * timer_stress - does every TSC-deadline expiry reach a halted vCPU?
 *
 * N times ("iterations=N" on the command line; default
 * 100000): arm IA32_TSC_DEADLINE 1 ms ahead, then `sti; hlt` until the
 * timer's vector arrives. A PIT at 100 Hz (I/O APIC pin 2, its own
 * vector) wakes the vCPU as a watchdog: a deadline that passed more than
 * 50 ms ago without its interrupt is counted as lost (an expiry KVM never
 * delivered) and the next iteration starts. The TSC rate comes from the
 * runtime's 1 ms LAPIC tick (KVM's 1 GHz APIC bus).
 *
 * Prints iterations, lost expiries, how many arrived more than 1 ms late
 * and the latest arrival (microseconds after the deadline); passes when
 * none was lost. Runs under splitvm and QEMU alike (scripts/stress-timer.sh
 * runs both side by side under load).
 */
.include "guest.inc"
.equ VEC_TIMER, 0x40
.equ VEC_PIT, 0x50
.equ PIT_PIN, 2
.equ DEFAULT_ITERATIONS, 100000
.equ LOST_MS, 50
.equ CALIBRATE_MS, 50

.section .rodata
.globl test_name
test_name: .asciz "timer_stress"
iterations_key: .asciz "iterations="

.data
.align 8
deadline:    .quad 0
fired:       .quad 0
tsc_per_ms:  .long 0
iterations:  .long DEFAULT_ITERATIONS
lost:        .long 0
late:        .long 0
max_late:    .long 0            /* TSC cycles (saturates at 2^32 - 1) */

.text
/* The timer's interrupt: remember when it came, EOI. */
timer_hook:
    rdtsc
    mov %eax, fired
    mov %edx, fired + 4
    jmp apic_eoi

/* eax:edx = now - deadline (64 bits). */
since_deadline:
    rdtsc
    sub deadline, %eax
    sbb deadline + 4, %edx
    ret

.globl test_main
test_main:
    push %ebx
    push %esi
    push %edi
    mov $iterations_key, %eax
    call cmdline_value
    test %edx, %edx
    jz 1f
    test %eax, %eax
    jz 1f
    mov %eax, iterations
1:  mov $1, %eax
    xor %ecx, %ecx
    cpuid
    test $(1 << 24), %ecx
    jnz 2f
    FAIL 1, "no TSC-deadline timer (CPUID.1:ECX[24] = 0)"
2:  mov $VEC_TIMER, %eax
    mov $timer_hook, %edx
    call irq_set_hook
    mov $VEC_PIT, %eax
    call irq_allow

    /* The TSC rate, against the runtime's 1 ms tick. */
    rdtsc
    mov %eax, %esi
    mov %edx, %edi
    mov $CALIBRATE_MS, %eax
    call wait_ms
    rdtsc
    sub %esi, %eax
    sbb %edi, %edx
    mov $CALIBRATE_MS, %ecx
    div %ecx
    mov %eax, tsc_per_ms
    PRINT_DEC "TSC kHz ", tsc_per_ms

    /* PIT channel 0, mode 2, 100 Hz (1193182 / 11932), on pin 2. */
    mov $0x34, %al
    outb %al, $PIT_MODE
    mov $(11932 & 0xff), %al
    outb %al, $PIT_CH0
    mov $(11932 >> 8), %al
    outb %al, $PIT_CH0
    mov $PIT_PIN, %eax
    mov $VEC_PIT, %edx              /* fixed, edge, high, physical, unmasked */
    xor %ecx, %ecx                  /* to APIC 0 */
    call ioapic_set_rte
    mov $APIC_LVT_TIMER, %eax
    mov $(APIC_TIMER_TSCDEADLINE | VEC_TIMER), %edx
    call apic_write

    xor %esi, %esi                  /* iterations done */
3:  cli
    mov irq_count + 4 * VEC_TIMER, %ebx
    inc %ebx                        /* the count this iteration waits for */
    rdtsc
    add tsc_per_ms, %eax
    adc $0, %edx
    mov %eax, deadline
    mov %edx, deadline + 4
    mov $MSR_TSC_DEADLINE, %ecx
    wrmsr
4:  sti
    hlt
    cli
    cmp %ebx, irq_count + 4 * VEC_TIMER
    jae 6f
    call since_deadline             /* woken by the PIT: too late yet? */
    test %edx, %edx
    js 4b
    jnz 5f
    mov tsc_per_ms, %ecx
    imul $LOST_MS, %ecx, %ecx
    cmp %ecx, %eax
    jb 4b
5:  incl lost
    jmp 8f
6:  mov fired, %eax                 /* arrived: how late */
    mov fired + 4, %edx
    sub deadline, %eax
    sbb deadline + 4, %edx
    js 8f                           /* (before the deadline: not possible) */
    jz 7f
    mov $0xffffffff, %eax
7:  cmp max_late, %eax
    jbe 71f
    mov %eax, max_late
71: cmp tsc_per_ms, %eax
    jbe 8f
    incl late
8:  inc %esi
    cmp iterations, %esi
    jb 3b

    mov $MSR_TSC_DEADLINE, %ecx     /* disarm, mask, stop the PIT */
    xor %eax, %eax
    xor %edx, %edx
    wrmsr
    mov $APIC_LVT_TIMER, %eax
    mov $(APIC_LVT_MASKED | TICK_VECTOR), %edx
    call apic_write
    mov $PIT_PIN, %eax
    call ioapic_mask
    PRINT_DEC "iterations ", %esi
    PRINT_DEC "lost ", lost
    PRINT_DEC "late_over_1ms ", late
    mov max_late, %eax              /* microseconds: cycles * 1000 / kHz */
    mov $1000, %ecx
    mul %ecx
    mov tsc_per_ms, %ecx
    div %ecx
    mov %eax, max_late
    PRINT_DEC "max_late_us ", max_late
    mov lost, %ebx
    EXPECT_EQ %ebx, $0, 2, "every TSC-deadline expiry reached the halted vCPU"
    pop %edi
    pop %esi
    pop %ebx
    xor %eax, %eax
    ret
