/*
 * x2apic - x2APIC mode of the in-kernel LAPIC (one vCPU).
 * Enables x2APIC (IA32_APIC_BASE bits 11 and 10), reads the ID through
 * MSR 0x802 (must equal the xAPIC ID), the derived logical ID (MSR 0x80d),
 * and takes self-IPIs through SELF IPI (MSR 0x83f) and the ICR (MSR 0x830,
 * shorthand self and physical destination = own ID), EOIing via MSR 0x80b.
 */
.include "guest.inc"

.section .rodata
.globl test_name
test_name: .asciz "x2apic"

.text
/* wait_vec(eax = vector) -> eax = 0 once taken once on the BSP */
wait_vec:
    lea irq_count(,%eax,4), %eax
    mov $1, %edx
    mov $2000, %ecx
    jmp wait_count

.globl test_main
test_main:
    push %ebx
    push %esi
    mov $1, %eax
    xor %ecx, %ecx
    cpuid
    test $(1 << 21), %ecx
    jnz 1f
    FAIL 1, "x2APIC not advertised (CPUID.1:ECX[21] = 0)"
1:  call apic_id
    mov %eax, %esi                  /* xAPIC ID */
    mov $MSR_APIC_BASE, %ecx
    rdmsr
    mov %eax, %ebx
    and $0xfffff900, %ebx           /* base, EN, BSP */
    EXPECT_EQ %ebx, $0xfee00900, 2, "IA32_APIC_BASE: base 0xfee00000, enabled, BSP"
    mov $MSR_APIC_BASE, %ecx
    rdmsr
    or $0xc00, %eax                 /* EN | EXTD */
    wrmsr
    movl $1, apic_x2
    mov $MSR_APIC_BASE, %ecx
    rdmsr
    mov %eax, %ebx
    and $0xc00, %ebx
    EXPECT_EQ %ebx, $0xc00, 3, "IA32_APIC_BASE reads back x2APIC mode (EN | EXTD)"

    mov $0x802, %ecx
    rdmsr
    mov %eax, %ebx
    EXPECT_EQ %ebx, %esi, 4, "x2APIC ID (MSR 0x802) equals the xAPIC ID"
    /* Logical ID: cluster = ID >> 4 in bits 31:16, 1 << (ID & 15) below. */
    mov %esi, %edx
    shr $4, %edx
    shl $16, %edx
    mov %esi, %ecx
    and $15, %ecx
    mov $1, %eax
    shl %cl, %eax
    or %eax, %edx
    mov %edx, %esi
    mov $0x80d, %ecx
    rdmsr
    mov %eax, %ebx
    EXPECT_EQ %ebx, %esi, 5, "x2APIC LDR (MSR 0x80d) derived from the ID"
    mov $0x80f, %ecx
    rdmsr
    mov %eax, %ebx
    and $0x1ff, %ebx
    EXPECT_EQ %ebx, $(0x100|SPURIOUS_VECTOR), 6, "SVR (MSR 0x80f) still enabled after the switch"

    mov $0x70, %eax
    call irq_allow
    mov $0x71, %eax
    call irq_allow
    mov $0x72, %eax
    call irq_allow

    mov $0x83f, %ecx                /* SELF IPI */
    mov $0x70, %eax
    xor %edx, %edx
    wrmsr
    mov $0x70, %eax
    call wait_vec
    EXPECT_EQ %eax, $0, 7, "self IPI via MSR 0x83f delivered (EOI via MSR 0x80b)"

    mov $(ICR_SELF | ICR_FIXED | 0x71), %eax
    xor %edx, %edx
    call apic_send_ipi              /* wrmsr 0x830 */
    mov $0x71, %eax
    call wait_vec
    EXPECT_EQ %eax, $0, 8, "self IPI via ICR (MSR 0x830, shorthand self) delivered"

    mov $0x802, %ecx
    rdmsr
    mov %eax, %edx
    mov $(ICR_FIXED | 0x72), %eax
    call apic_send_ipi
    mov $0x72, %eax
    call wait_vec
    EXPECT_EQ %eax, $0, 9, "IPI via ICR (MSR 0x830) to own x2APIC ID delivered"

    mov $0x100, %ebx                /* ISR must be empty after the EOIs */
    xor %esi, %esi
2:  mov %ebx, %eax
    call apic_read
    or %eax, %esi
    add $0x10, %ebx
    cmp $0x180, %ebx
    jne 2b
    EXPECT_EQ %esi, $0, 10, "ISR empty: every EOI through MSR 0x80b retired its vector"

    mov $20, %eax
    call wait_ms
    EXPECT_EQ irq_count+4*0x70, $1, 11, "vector 0x70 taken once"
    EXPECT_EQ irq_count+4*0x71, $1, 12, "vector 0x71 taken once"
    EXPECT_EQ irq_count+4*0x72, $1, 13, "vector 0x72 taken once"
    xor %eax, %eax
    pop %esi
    pop %ebx
    ret
