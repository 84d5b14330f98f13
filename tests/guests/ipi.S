/*
 * ipi - inter-processor interrupts through the xAPIC ICR.  Needs 3 vCPUs.
 *  - fixed IPI, vector 0x50, BSP -> vCPU 1; its handler answers with a
 *    fixed IPI, vector 0x51, back to the BSP;
 *  - broadcast all-excluding-self, vector 0x52, from the BSP: vCPUs 1 and 2
 *    take it, the BSP does not;
 *  - self IPI (shorthand self), vector 0x53, on the BSP.
 * No I/O APIC involvement: splitvm sees no EOI exit.
 */
.include "guest.inc"

.section .rodata
.globl test_name
test_name: .asciz "ipi"

.text
/* On vCPU 1: answer 0x50 with 0x51 to the BSP. */
pong_hook:
    mov $(ICR_FIXED | 0x51), %eax
    mov cpu_apic_id, %edx
    call apic_send_ipi
    jmp apic_eoi

.globl test_main
test_main:
    mov $0x50, %eax
    mov $pong_hook, %edx
    call irq_set_hook
    mov $0x51, %eax
    call irq_allow
    mov $0x52, %eax
    call irq_allow
    mov $0x53, %eax
    call irq_allow
    mov $3, %eax
    call smp_start

    mov $(ICR_FIXED | 0x50), %eax
    mov cpu_apic_id + 4, %edx
    call apic_send_ipi
    mov $(irq_count + 4 * 0x51), %eax
    mov $1, %edx
    mov $2000, %ecx
    call wait_count
    EXPECT_EQ %eax, $0, 1, "fixed IPI BSP -> vCPU 1 -> BSP round trip"
    EXPECT_EQ irq_count+4*(256+0x50), $1, 2, "vCPU 1 took vector 0x50 once"

    mov $(ICR_ALL_EXCL | ICR_FIXED | 0x52), %eax
    xor %edx, %edx
    call apic_send_ipi
    mov $(irq_count + 4 * (256 + 0x52)), %eax
    mov $1, %edx
    mov $2000, %ecx
    call wait_count
    EXPECT_EQ %eax, $0, 3, "broadcast (all excluding self) reaches vCPU 1"
    mov $(irq_count + 4 * (512 + 0x52)), %eax
    mov $1, %edx
    mov $2000, %ecx
    call wait_count
    EXPECT_EQ %eax, $0, 4, "broadcast (all excluding self) reaches vCPU 2"

    mov $(ICR_SELF | ICR_FIXED | 0x53), %eax
    xor %edx, %edx
    call apic_send_ipi
    mov $(irq_count + 4 * 0x53), %eax
    mov $1, %edx
    mov $2000, %ecx
    call wait_count
    EXPECT_EQ %eax, $0, 5, "self IPI (shorthand self) delivered"

    mov $20, %eax
    call wait_ms
    EXPECT_EQ irq_count+4*0x52, $0, 6, "broadcast excluding self skipped the BSP"
    EXPECT_EQ irq_count+4*0x51, $1, 7, "BSP took exactly one reply"
    EXPECT_EQ irq_count+4*(256+0x52), $1, 8, "vCPU 1 took one broadcast"
    EXPECT_EQ irq_count+4*(512+0x52), $1, 9, "vCPU 2 took one broadcast"
    EXPECT_EQ irq_count+4*(512+0x50), $0, 10, "vCPU 2 did not take vCPU 1's IPI"
    xor %eax, %eax
    ret
