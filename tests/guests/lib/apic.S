/*
 * apic.S - local APIC (xAPIC MMIO or x2APIC MSRs), I/O APIC, LAPIC-timer
 * tick and waiting, pc-testdev lines, fw_cfg and the splitvm MSI test port.
 * Calling convention: see guest.inc.
 */
.include "guest.inc"

.text
.code32

/* ---- local APIC --------------------------------------------------------- */

/* apic_read(eax = register offset) -> eax */
.globl apic_read
apic_read:
    cmpl $0, apic_x2
    jne 1f
    mov APIC_BASE(%eax), %eax
    ret
1:  mov %eax, %ecx
    shr $4, %ecx
    add $MSR_X2APIC_BASE, %ecx
    rdmsr
    ret

/* apic_write(eax = register offset, edx = value) */
.globl apic_write
apic_write:
    cmpl $0, apic_x2
    jne 1f
    mov %edx, APIC_BASE(%eax)
    ret
1:  mov %eax, %ecx
    shr $4, %ecx
    add $MSR_X2APIC_BASE, %ecx
    mov %edx, %eax
    xor %edx, %edx
    wrmsr
    ret

/* apic_eoi() */
.globl apic_eoi
apic_eoi:
    mov $APIC_EOI, %eax
    xor %edx, %edx
    jmp apic_write

/* apic_id() -> eax: the APIC ID (bits 31:24 of the xAPIC register, the
 * whole 32-bit x2APIC ID in x2APIC mode). */
.globl apic_id
apic_id:
    mov $APIC_ID, %eax
    call apic_read
    cmpl $0, apic_x2
    jne 1f
    shr $24, %eax
1:  ret

/*
 * apic_send_ipi(eax = ICR low word, edx = destination field)
 * xAPIC: destination goes to ICR[63:56]; x2APIC: ICR[63:32] (MSR 0x830).
 */
.globl apic_send_ipi
apic_send_ipi:
    cmpl $0, apic_x2
    jne 2f
    shl $24, %edx
    mov %edx, APIC_BASE + APIC_ICR_HI
    mov %eax, APIC_BASE + APIC_ICR_LO
1:  testl $(1 << 12), APIC_BASE + APIC_ICR_LO  /* delivery status */
    jnz 1b
    ret
2:  mov $(MSR_X2APIC_BASE + (APIC_ICR_LO >> 4)), %ecx
    wrmsr
    ret

/* apic_init_cpu(): software-enable this CPU's LAPIC, TPR 0, mask LINT0
 * (the BIOS may have left it as ExtINT from the 8259) and the timer. */
.globl apic_init_cpu
apic_init_cpu:
    mov $APIC_SVR, %eax
    mov $(0x100 | SPURIOUS_VECTOR), %edx
    call apic_write
    mov $APIC_TPR, %eax
    xor %edx, %edx
    call apic_write
    mov $APIC_LVT_LINT0, %eax
    mov $APIC_LVT_MASKED, %edx
    call apic_write
    mov $APIC_LVT_TIMER, %eax
    mov $(APIC_LVT_MASKED | TICK_VECTOR), %edx
    call apic_write
    ret

/* ---- xAPIC logical destinations ---------------------------------------- */

/* apic_set_flat(eax = cpu): flat model (DFR 0xffffffff), logical ID bit
 * `cpu` (LDR = 1 << (24 + cpu)).  xAPIC mode only. */
.globl apic_set_flat
apic_set_flat:
    mov $0xffffffff, %edx
    xor %ecx, %ecx
    jmp apic_set_logical

/* apic_set_cluster(eax = cpu): cluster model (DFR 0x0fffffff), cluster 1,
 * member bit `cpu` (LDR = 0x10000000 | 1 << (24 + cpu)).  xAPIC mode only. */
.globl apic_set_cluster
apic_set_cluster:
    mov $0x0fffffff, %edx
    mov $0x10000000, %ecx
    /* fall through */

/* apic_set_logical(eax = cpu, edx = DFR, ecx = bits ORed into the LDR) */
apic_set_logical:
    push %ebx
    push %esi
    mov %eax, %ebx
    mov %ecx, %esi
    mov $APIC_DFR, %eax
    call apic_write
    lea 24(%ebx), %ecx
    mov $1, %edx
    shl %cl, %edx
    or %esi, %edx
    mov $APIC_LDR, %eax
    call apic_write
    pop %esi
    pop %ebx
    ret

/* ---- LAPIC-timer tick and waiting ---------------------------------------- */

/* Hook for TICK_VECTOR. */
.globl tick_handler
tick_handler:
    lock incl tick_count
    jmp apic_eoi

/* tick_start(): periodic LAPIC timer, divide by 1, TICK_COUNT (1 ms). */
.globl tick_start
tick_start:
    mov $APIC_TDCR, %eax
    mov $0xb, %edx
    call apic_write
    mov $APIC_LVT_TIMER, %eax
    mov $(APIC_TIMER_PERIODIC | TICK_VECTOR), %edx
    call apic_write
    mov $APIC_TMICT, %eax
    mov $TICK_COUNT, %edx
    jmp apic_write

/* tick_stop(): mask and stop the LAPIC timer. */
.globl tick_stop
tick_stop:
    mov $APIC_LVT_TIMER, %eax
    mov $(APIC_LVT_MASKED | TICK_VECTOR), %edx
    call apic_write
    mov $APIC_TMICT, %eax
    xor %edx, %edx
    jmp apic_write

/*
 * wait_count(eax = pointer to dword, edx = target, ecx = timeout in ms)
 *   -> eax = 0 once *pointer >= target (unsigned), 1 on timeout.
 * Halts with interrupts enabled (sti; hlt) and is woken by interrupts,
 * including a 1 ms LAPIC-timer tick on this CPU.  Returns with IF = 0.
 */
.globl wait_count
wait_count:
    push %ebx
    push %esi
    push %edi
    mov %eax, %ebx
    mov %edx, %esi
    mov %ecx, %edi
    cli
    movl $0, tick_count
    call tick_start
1:  cli
    cmp %esi, (%ebx)
    jae 2f
    cmp %edi, tick_count
    jae 3f
    sti
    hlt
    jmp 1b
2:  call tick_stop
    xor %eax, %eax
    jmp 4f
3:  call tick_stop
    mov $1, %eax
4:  pop %edi
    pop %esi
    pop %ebx
    ret

/* wait_ms(eax = ms): let interrupts in for about that long; IF = 0 after. */
.globl wait_ms
wait_ms:
    mov %eax, %ecx
    mov $never, %eax
    mov $1, %edx
    jmp wait_count

/* ---- how this host's LAPIC acknowledges interrupts ---------------------- */

/*
 * detect_auto_eoi() -> eax: 1 if the ISR bit of a vector is clear inside
 * its own handler, i.e. the host's KVM retires (EOIs) an interrupt when it
 * injects it.  This is what the kvm_pvm backend does (no ISR bit is ever
 * seen, an EOI exit for a level vector happens at injection); on VMX/SVM
 * hosts the bit is set until the guest's EOI and this returns 0.  Uses a
 * self IPI with PROBE_VECTOR.  Result also in lapic_auto_eoi.
 */
.globl detect_auto_eoi
detect_auto_eoi:
    mov $PROBE_VECTOR, %eax
    mov $probe_hook, %edx
    call irq_set_hook
    movl $-1, probe_isr
    mov $(ICR_SELF | ICR_FIXED | PROBE_VECTOR), %eax
    xor %edx, %edx
    call apic_send_ipi
    mov $(irq_count + 4 * PROBE_VECTOR), %eax
    mov $1, %edx
    mov $1000, %ecx
    call wait_count
    test %eax, %eax
    jz 1f
    FAIL EXIT_PROBE, "self IPI for the ISR probe was not delivered"
1:  xor %eax, %eax
    cmpl $0, probe_isr
    jne 2f
    inc %eax
    PRINT "note: ISR bit clear inside the handler: this KVM EOIs interrupts at injection (kvm_pvm)"
    mov $1, %eax
2:  mov %eax, lapic_auto_eoi
    ret

probe_hook:
    mov $(APIC_ISR + 0x10 * (PROBE_VECTOR >> 5)), %eax
    call apic_read
    and $(1 << (PROBE_VECTOR & 31)), %eax
    mov %eax, probe_isr
    jmp apic_eoi

/* report_count(eax = vector): "count: vector V taken N" (N summed over
 * CPUs); tests/micro_guests.rs compares N with splitvm's counters. */
.globl report_count
report_count:
    push %ebx
    push %esi
    mov %eax, %ebx
    xor %esi, %esi
    xor %ecx, %ecx
1:  mov %ecx, %edx
    shl $8, %edx
    add %ebx, %edx
    add irq_count(,%edx,4), %esi
    inc %ecx
    cmp $MAX_CPUS, %ecx
    jne 1b
    PUTS "count: vector "
    mov %ebx, %eax
    call putdec
    PUTS " taken "
    mov %esi, %eax
    call putdec
    PRINT ""
    mov %esi, %eax
    pop %esi
    pop %ebx
    ret

/* ---- I/O APIC ------------------------------------------------------------ */

/* ioapic_read(eax = register index) -> eax */
.globl ioapic_read
ioapic_read:
    mov %eax, IOAPIC_REGSEL
    mov IOAPIC_WIN, %eax
    ret

/* ioapic_write(eax = register index, edx = value) */
.globl ioapic_write
ioapic_write:
    mov %eax, IOAPIC_REGSEL
    mov %edx, IOAPIC_WIN
    ret

/* ioapic_set_rte(eax = pin, edx = low word, ecx = high word);
 * the high word (destination) is written first. */
.globl ioapic_set_rte
ioapic_set_rte:
    lea IOAPIC_REDTBL(,%eax,2), %eax
    inc %eax
    mov %eax, IOAPIC_REGSEL
    mov %ecx, IOAPIC_WIN
    dec %eax
    mov %eax, IOAPIC_REGSEL
    mov %edx, IOAPIC_WIN
    ret

/* ioapic_rte_low(eax = pin) -> eax */
.globl ioapic_rte_low
ioapic_rte_low:
    lea IOAPIC_REDTBL(,%eax,2), %eax
    jmp ioapic_read

/* ioapic_mask(eax = pin), ioapic_unmask(eax = pin): read-modify-write. */
.globl ioapic_mask
ioapic_mask:
    lea IOAPIC_REDTBL(,%eax,2), %eax
    mov %eax, IOAPIC_REGSEL
    mov IOAPIC_WIN, %edx
    or $RTE_MASKED, %edx
    mov %edx, IOAPIC_WIN
    ret

.globl ioapic_unmask
ioapic_unmask:
    lea IOAPIC_REDTBL(,%eax,2), %eax
    mov %eax, IOAPIC_REGSEL
    mov IOAPIC_WIN, %edx
    and $~RTE_MASKED, %edx
    mov %edx, IOAPIC_WIN
    ret

/* set_line(eax = pin, edx = level): pc-testdev byte write to 0x2000 + pin. */
.globl set_line
set_line:
    xchg %eax, %edx
    add $TESTDEV_IRQ_BASE, %edx
    outb %al, %dx
    ret

/* ---- fw_cfg -------------------------------------------------------------- */

/* fwcfg_ncpus() -> eax: NB_CPUS, or 0 if there is no fw_cfg ("QEMU"). */
.globl fwcfg_ncpus
fwcfg_ncpus:
    mov $FWCFG_SEL, %dx
    mov $FWCFG_SIGNATURE, %ax
    outw %ax, %dx
    mov $FWCFG_DATA, %dx
    xor %ecx, %ecx
    mov $4, %ah
1:  shl $8, %ecx
    inb %dx, %al
    mov %al, %cl
    dec %ah
    jnz 1b
    cmp $0x51454d55, %ecx           /* 'Q','E','M','U' read in that order */
    je 2f
    xor %eax, %eax
    ret
2:  mov $FWCFG_SEL, %dx
    mov $FWCFG_NB_CPUS, %ax
    outw %ax, %dx
    mov $FWCFG_DATA, %dx
    xor %eax, %eax
    inb %dx, %al
    mov %eax, %ecx
    inb %dx, %al
    shl $8, %eax
    or %ecx, %eax
    ret

/* ---- splitvm MSI test port ---------------------------------------------- */

/* msi_inject(eax = address low, edx = data): address high 0, then inject. */
.globl msi_inject
msi_inject:
    mov %edx, %ecx
    mov $MSI_PORT_ADDR_LO, %dx
    outl %eax, %dx
    mov $MSI_PORT_ADDR_HI, %dx
    xor %eax, %eax
    outl %eax, %dx
    mov $MSI_PORT_DATA, %dx
    mov %ecx, %eax
    outl %eax, %dx
    mov $MSI_PORT_INJECT, %dx
    mov $1, %eax
    outl %eax, %dx
    ret

/* msi_injected() -> eax: the port's count of injected MSIs. */
.globl msi_injected
msi_injected:
    mov $MSI_PORT_INJECT, %dx
    inl %dx, %eax
    ret

/* ------------------------------------------------------------------------- */
.section .data
.globl apic_x2
apic_x2:    .long 0                 /* nonzero once x2APIC mode is on (BSP) */
.globl tick_count
tick_count: .long 0
never:      .long 0
probe_isr:  .long 0
.globl lapic_auto_eoi
lapic_auto_eoi: .long 0             /* set by detect_auto_eoi */
