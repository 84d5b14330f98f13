/*
 * xapic_only - run with `--cpu-features -x2apic` and 2 vCPUs.
 *  1. CPUID.1:ECX[21] (x2APIC) reads 0;
 *  2. logical IPIs in xAPIC flat model: DFR = 0xffffffff, LDR bit `cpu`;
 *     an IPI to logical 0x02 reaches only vCPU 1;
 *  3. logical IPIs in xAPIC cluster model: DFR = 0x0fffffff, cluster 1,
 *     member bit `cpu` (LDR = 0x1N000000); an IPI to 0x12 reaches only
 *     vCPU 1, one to 0x13 reaches both.
 * IPIs never leave KVM, so splitvm has no counts to show for them; the
 * guest counts them itself (irq_count).
 */
.include "guest.inc"
.equ VEC, 0x46

.section .rodata
.globl test_name
test_name: .asciz "xapic_only"

.text
/* ipi(edx = logical destination) */
ipi:
    mov $(VEC | ICR_LOGICAL | ICR_ASSERT), %eax
    jmp apic_send_ipi

/* wait_for(eax = cpu, edx = count) -> eax = 0 when reached */
wait_for:
    shl $8, %eax
    add $VEC, %eax
    lea irq_count(,%eax,4), %eax
    mov $2000, %ecx
    jmp wait_count

.globl test_main
test_main:
    push %ebx
    mov $1, %eax
    xor %ecx, %ecx
    cpuid
    and $(1 << 21), %ecx
    EXPECT_EQ %ecx, $0, 1, "CPUID.1:ECX[21] (x2APIC) is clear"
    mov $VEC, %eax
    call irq_allow
    movl $apic_set_flat, ap_init_hook
    xor %eax, %eax
    call apic_set_flat
    mov $2, %eax
    call smp_start

    mov $0x02, %edx
    call ipi
    mov $1, %eax
    mov $1, %edx
    call wait_for
    EXPECT_EQ %eax, $0, 2, "flat: logical 0x02 reaches vCPU 1"
    mov $20, %eax
    call wait_ms
    EXPECT_EQ irq_count+4*VEC, $0, 3, "flat: and not vCPU 0"

    /* Cluster model. A LAPIC's registers are reachable only from its own
     * CPU: vCPU 0 switches here, vCPU 1 in the handler of a (still flat)
     * IPI with vector VEC2. */
    xor %eax, %eax
    call apic_set_cluster
    movl $apic_set_cluster, ap_vec_hook_fn
    mov $VEC2, %eax
    mov $ap_switch, %edx
    call irq_set_hook
    mov $0x02, %edx                 /* vCPU 1 is still flat: bit 1 */
    mov $(VEC2 | ICR_LOGICAL | ICR_ASSERT), %eax
    call apic_send_ipi
    mov $(irq_count + 4 * (256 + VEC2)), %eax
    mov $1, %edx
    mov $2000, %ecx
    call wait_count
    EXPECT_EQ %eax, $0, 4, "vCPU 1 switched to the cluster model"
    mov $20, %eax
    call wait_ms

    mov $0x12, %edx
    call ipi
    mov $1, %eax
    mov $2, %edx
    call wait_for
    EXPECT_EQ %eax, $0, 5, "cluster: 0x12 reaches vCPU 1"
    mov $20, %eax
    call wait_ms
    EXPECT_EQ irq_count+4*VEC, $0, 6, "cluster: 0x12 does not reach vCPU 0"
    mov $0x13, %edx
    call ipi
    xor %eax, %eax
    mov $1, %edx
    call wait_for
    EXPECT_EQ %eax, $0, 7, "cluster: 0x13 reaches vCPU 0"
    mov $1, %eax
    mov $3, %edx
    call wait_for
    EXPECT_EQ %eax, $0, 8, "cluster: 0x13 reaches vCPU 1"
    pop %ebx
    xor %eax, %eax
    ret

.equ VEC2, 0x47
/* hook for VEC2 on vCPU 1: switch its LAPIC to the cluster model. */
ap_switch:
    mov %edx, %eax                  /* cpu */
    call *ap_vec_hook_fn
    jmp apic_eoi

.data
ap_vec_hook_fn: .long 0
