/*
 * lapic_timer - the in-kernel LAPIC timer.
 *  - one-shot: divide by 1, initial count 100000 (100 us at KVM's 1 GHz APIC
 *    bus), vector 0x60: fires once; current count reads 0 afterwards;
 *  - TSC-deadline (if CPUID.1:ECX[24]): LVT timer mode 2, vector 0x61,
 *    IA32_TSC_DEADLINE = rdtsc + 200000: fires once, not before the
 *    deadline, and the MSR reads 0 afterwards.
 * "Once" is checked by leaving interrupts enabled for twice the time the
 * timer took to fire (a short TSC-bounded window).  The waits themselves
 * are `sti; hlt` woken by the timer under test (the runtime's tick also
 * uses the LAPIC timer, so it is not used here).
 */
.include "guest.inc"
.equ VEC_ONESHOT, 0x60
.equ VEC_DEADLINE, 0x61

.section .rodata
.globl test_name
test_name: .asciz "lapic_timer"

.text
/* halt_until(eax = pointer): sti; hlt until *pointer != 0; IF = 0 after. */
halt_until:
1:  cli
    cmpl $0, (%eax)
    jne 2f
    sti
    hlt
    jmp 1b
2:  ret

/* window(eax = TSC cycles): interrupts enabled for that long; IF = 0 after. */
window:
    push %ebx
    push %esi
    cmp $0x40000000, %eax
    jb 1f
    mov $0x40000000, %eax
1:  cmp $1000000, %eax
    jae 2f
    mov $1000000, %eax
2:  mov %eax, %esi
    rdtsc
    mov %eax, %ebx
    sti
3:  rdtsc
    sub %ebx, %eax
    cmp %esi, %eax
    jb 3b
    cli
    pop %esi
    pop %ebx
    ret

.globl test_main
test_main:
    push %ebx
    push %esi
    push %edi
    push %ebp
    mov $VEC_ONESHOT, %eax
    call irq_allow
    mov $VEC_DEADLINE, %eax
    call irq_allow

    /* ---- one-shot ---- */
    mov $APIC_TDCR, %eax
    mov $0xb, %edx                  /* divide by 1 */
    call apic_write
    mov $APIC_LVT_TIMER, %eax
    mov $VEC_ONESHOT, %edx          /* one-shot, unmasked */
    call apic_write
    rdtsc
    mov %eax, %esi
    mov $APIC_TMICT, %eax
    mov $100000, %edx
    call apic_write
    PRINT "waiting for the one-shot timer"
    mov $(irq_count + 4 * VEC_ONESHOT), %eax
    call halt_until
    rdtsc
    sub %esi, %eax
    mov %eax, %esi                  /* TSC cycles from arming to interrupt */
    PRINT_DEC "one-shot fired after TSC cycles: ", %esi
    mov $APIC_TMCCT, %eax
    call apic_read
    mov %eax, %ebx
    EXPECT_EQ %ebx, $0, 1, "one-shot current count reads 0 after firing"
    mov $APIC_TMICT, %eax
    call apic_read
    mov %eax, %ebx
    EXPECT_EQ %ebx, $100000, 2, "initial count reads back"
    lea (%esi,%esi), %eax
    call window
    EXPECT_EQ irq_count+4*VEC_ONESHOT, $1, 3, "one-shot timer fired exactly once"

    /* ---- TSC-deadline ---- */
    mov $1, %eax
    xor %ecx, %ecx
    cpuid
    test $(1 << 24), %ecx
    jnz 1f
    PRINT "SKIP: TSC-deadline timer not advertised (CPUID.1:ECX[24] = 0)"
    jmp 9f
1:  mov $APIC_LVT_TIMER, %eax
    mov $(APIC_TIMER_TSCDEADLINE | VEC_DEADLINE), %edx
    call apic_write
    rdtsc
    mov %eax, %esi                  /* armed at (low 32 bits) */
    add $200000, %eax
    adc $0, %edx
    mov %eax, %edi                  /* deadline */
    mov %edx, %ebp
    mov $MSR_TSC_DEADLINE, %ecx
    wrmsr
    PRINT "waiting for the TSC-deadline timer"
    mov $(irq_count + 4 * VEC_DEADLINE), %eax
    call halt_until
    rdtsc
    mov %eax, %ebx
    sub %edi, %eax
    sbb %ebp, %edx                  /* now - deadline: must not be negative */
    shr $31, %edx
    EXPECT_EQ %edx, $0, 4, "TSC-deadline timer did not fire before the deadline"
    sub %esi, %ebx
    mov %ebx, %esi
    PRINT_DEC "TSC-deadline fired after TSC cycles: ", %esi
    mov $MSR_TSC_DEADLINE, %ecx
    rdmsr
    or %edx, %eax
    mov %eax, %ebx
    EXPECT_EQ %ebx, $0, 5, "IA32_TSC_DEADLINE reads 0 after firing"
    lea (%esi,%esi), %eax
    call window
    EXPECT_EQ irq_count+4*VEC_DEADLINE, $1, 6, "TSC-deadline timer fired exactly once"

9:  mov $APIC_LVT_TIMER, %eax
    mov $(APIC_LVT_MASKED | TICK_VECTOR), %edx
    call apic_write
    xor %eax, %eax
    pop %ebp
    pop %edi
    pop %esi
    pop %ebx
    ret
