/*
 * smp.S - AP bring-up: INIT + SIPI to a real-mode trampoline copied to
 * TRAMPOLINE_ADDR (below 1 MiB), which loads the runtime's GDT, enters
 * protected mode and jumps to ap_entry32 on its own stack.
 *
 * An AP enables its LAPIC, records its APIC ID in cpu_apic_id[cpu], runs
 * ap_init_hook(eax = cpu) if a test set one, counts itself in ap_online
 * and then idles in `sti; hlt`, handling interrupts through the common IDT.
 * CPU indexes: 0 = BSP, then 1, 2, ... in start order.
 */
.include "guest.inc"

.text

/* ---- real-mode trampoline (position independent: CS = 0x0800) --------- */
.code16
tramp_start:
    cli
    mov %cs, %ax
    mov %ax, %ds
    lgdtl tramp_gdtr - tramp_start
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $KERNEL_CS, $ap_entry32
.align 4
tramp_gdtr:
    .word 3 * 8 - 1
    .long gdt
tramp_end:

/* ---- AP 32-bit entry ------------------------------------------------------ */
.code32
ap_entry32:
    mov $KERNEL_DS, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    cld
    mov ap_starting_cpu, %ebx
    mov %ebx, %esp
    inc %esp
    shl $12, %esp                   /* (cpu + 1) * STACK_SIZE */
    add $stacks, %esp
    lidt idt_desc_ap
    call apic_init_cpu
    call apic_id
    mov %eax, cpu_apic_id(,%ebx,4)
    mov ap_init_hook, %ecx
    test %ecx, %ecx
    jz 1f
    mov %ebx, %eax
    call *%ecx
1:  lock incl ap_online
2:  sti
    hlt
    jmp 2b

/*
 * smp_start(eax = number of CPUs wanted, BSP included).  Fails the test
 * (EXIT_FEW_CPUS) if fw_cfg reports fewer; starts APs with APIC IDs
 * 1 .. n-1 one after the other (cpu index = APIC ID).
 */
.globl smp_start
smp_start:
    push %ebx
    push %esi
    mov %eax, %ebx
    call fwcfg_ncpus
    mov %eax, %esi
    PRINT_DEC "fw_cfg NB_CPUS: ", %esi
    cmp %ebx, %esi
    jae 1f
    FAIL EXIT_FEW_CPUS, "fewer vCPUs than this test needs (run with more --cpus / -smp)"
1:  mov $1, %esi
2:  cmp %ebx, %esi
    jae 3f
    mov %esi, %eax
    call start_ap
    inc %esi
    jmp 2b
3:  pop %esi
    pop %ebx
    ret

/* start_ap(eax = APIC ID): INIT, SIPI (again if needed), wait until online. */
.globl start_ap
start_ap:
    push %ebx
    push %esi
    push %edi
    mov %eax, %ebx
    /* Copy the trampoline below 1 MiB. */
    mov $tramp_start, %esi
    mov $TRAMPOLINE_ADDR, %edi
    mov $(tramp_end - tramp_start), %ecx
    rep movsb
    mov ap_online, %eax
    inc %eax
    mov %eax, ap_starting_cpu
    mov %eax, %edi                  /* ap_online target */

    mov $(ICR_INIT | ICR_ASSERT), %eax
    mov %ebx, %edx
    call apic_send_ipi
    mov $(ICR_STARTUP | (TRAMPOLINE_ADDR >> 12)), %eax
    mov %ebx, %edx
    call apic_send_ipi
    mov $ap_online, %eax
    mov %edi, %edx
    mov $200, %ecx
    call wait_count
    test %eax, %eax
    jz 1f
    PRINT "AP did not start after one SIPI; sending another"
    mov $(ICR_STARTUP | (TRAMPOLINE_ADDR >> 12)), %eax
    mov %ebx, %edx
    call apic_send_ipi
    mov $ap_online, %eax
    mov %edi, %edx
    mov $2000, %ecx
    call wait_count
    test %eax, %eax
    jz 1f
    FAIL EXIT_AP_START, "AP did not come up after INIT/SIPI/SIPI"
1:  mov $ap_up_str, %eax
    call puts
    mov %edi, %eax
    call putdec
    mov $apic_id_str, %eax
    call puts
    mov cpu_apic_id(,%edi,4), %eax
    call putdec
    PRINT ""
    cmp cpu_apic_id(,%edi,4), %ebx
    je 2f
    FAIL EXIT_AP_START, "AP reports a different APIC ID than the one started"
2:  pop %edi
    pop %esi
    pop %ebx
    ret

.section .rodata
idt_desc_ap:
    .word 256 * 8 - 1
    .long idt
ap_up_str:   .asciz "AP up: cpu "
apic_id_str: .asciz ", APIC ID "

.section .data
.globl ap_online, ap_init_hook
ap_online:       .long 0            /* APs that finished their start-up */
ap_init_hook:    .long 0            /* optional: called on each AP with eax = cpu */
ap_starting_cpu: .long 0
