/*
 * paths - the life of an interrupt on one delivery path, timed by the
 * guest (`splitvm paths` embeds this guest; scripts/bench-interrupt-paths.sh
 * runs it under QEMU too).
 *
 * Command line: "path=P count=N cpus=C".
 *   P  1 pic          8259 IRQ 5, edge, ExtINT through LINT0 (vCPU 0 only)
 *      2 ioapic-edge  I/O APIC pin 10, edge (pc-testdev line 10: 1, 0)
 *      3 ioapic-level I/O APIC pin 11, level (line up; the handler brings
 *                     it down, then EOIs at the LAPIC)
 *      4 msi          one MSI through splitvm's MSI test port (under QEMU,
 *                     which has none, through its edu device: one MMIO
 *                     write to its interrupt-raise register)
 *      5 msix         vector 0 of the MSI-X test function (1234:5356) by
 *                     its doorbell
 *      6 ipi          a fixed IPI (to itself with 1 CPU)
 *      7 lapic-timer  the TSC-deadline timer, armed 2,000 cycles ahead
 *                     (vCPU 0 only)
 *   C  2: the interrupt goes to vCPU 1, whose handler runs while vCPU 0
 *      waits for it (spinning); otherwise to vCPU 0, which waits in
 *      `sti; hlt`.
 * Each of the N interrupts: t0 = rdtsc, the trigger (for the timer: t0 is
 * the deadline), the handler's first instruction reads the TSC (h), does
 * the path's end of interrupt (8259 EOI, or line down and LAPIC EOI, or
 * LAPIC EOI) and reads it again (e). h - t0 and e - h go into two
 * histograms of 240 buckets (16 linear, then 8 per power of two), printed
 * in fixed-width hex with the calibrated TSC rate: the output does not
 * depend on N, so two runs of N and 2N interrupts differ by exactly N
 * interrupts' exits.
 */
.include "guest.inc"
.equ VEC, 0x60
.equ PIC_IRQ, 5
.equ PIC_VEC, PIC_MASTER_BASE + PIC_IRQ
.equ EDGE_PIN, 10
.equ LEVEL_PIN, 11
.equ BUCKETS, 240
.equ MSIX_DOORBELL, 0xc00

.section .rodata
.globl test_name
test_name: .asciz "paths"
path_key:  .asciz "path="
count_key: .asciz "count="
cpus_key:  .asciz "cpus="

.data
.align 8
t0:        .quad 0
h_tsc:     .quad 0
e_tsc:     .quad 0
flag:      .long 0
path:      .long 0
count:     .long 0
cpus:      .long 1
dest:      .long 0                  /* the target's APIC ID */
msix_bar:  .long 0
edu_bar:   .long 0
tsc_khz:   .long 0

.bss
.align 4
hist_lat:  .skip BUCKETS * 4
hist_eoi:  .skip BUCKETS * 4

.text
/* setgate(eax = vector, edx = handler): a 32-bit interrupt gate. */
setgate:
    mov %edx, %ecx
    and $0xffff, %ecx
    or $(KERNEL_CS << 16), %ecx
    mov %ecx, idt(,%eax,8)
    and $0xffff0000, %edx
    or $0x8e00, %edx
    mov %edx, idt+4(,%eax,8)
    ret

/* The measured handler: the TSC first, then the path's end of interrupt,
 * the TSC again, the flag. Returns with popfl + ret (as the runtime:
 * iret is not emulated on every host). */
mhandler:
    push %eax
    push %edx
    rdtsc
    mov %eax, h_tsc
    mov %edx, h_tsc + 4
    push %ecx
    mov path, %eax
    cmp $1, %eax
    jne 1f
    mov $PIC_EOI, %al               /* 8259: non-specific EOI */
    outb %al, $PIC1_CMD
    jmp 3f
1:  cmp $3, %eax
    jne 2f
    mov $(TESTDEV_IRQ_BASE + LEVEL_PIN), %edx   /* the level line down */
    xor %al, %al
    outb %al, %dx
2:  call apic_eoi
3:  rdtsc
    mov %eax, e_tsc
    mov %edx, e_tsc + 4
    movl $1, flag
    pop %ecx
    pop %edx
    pop %eax
    IRET_FREE

/* bucket(eax = cycles) -> eax = histogram index. */
bucket:
    cmp $16, %eax
    jb 9f
    bsr %eax, %ecx                  /* e >= 4 */
    mov %ecx, %edx
    sub $3, %ecx
    shr %cl, %eax
    and $7, %eax                    /* the 3 bits below the top one */
    lea -4(%edx), %ecx
    shl $3, %ecx
    lea 16(%eax,%ecx), %eax
    cmp $BUCKETS, %eax
    jb 9f
    mov $(BUCKETS - 1), %eax
9:  ret

/* add(eax:edx = later, ecx = pointer to the earlier quad, ebx = hist). */
add_sample:
    sub (%ecx), %eax
    sbb 4(%ecx), %edx
    jns 1f
    xor %eax, %eax                  /* (never earlier) */
    xor %edx, %edx
1:  test %edx, %edx
    jz 2f
    mov $0xffffffff, %eax
2:  call bucket
    incl (%ebx,%eax,4)
    ret

/* print_hist(eax = name, ebx = hist): "NAME" then 240 fixed-width counts. */
print_hist:
    push %esi
    call puts
    xor %esi, %esi
1:  mov $' ', %al
    call putc
    mov (%ebx,%esi,4), %eax
    call puthex
    inc %esi
    cmp $BUCKETS, %esi
    jb 1b
    mov $'\n', %al
    call putc
    pop %esi
    ret

/* PCI configuration dword at eax (0x80000000 | bdf | reg) -> eax. */
pci_read:
    mov $0xcf8, %dx
    out %eax, %dx
    mov $0xcfc, %dx
    in %dx, %eax
    ret
/* write ecx there */
pci_write:
    mov $0xcf8, %dx
    out %eax, %dx
    mov $0xcfc, %dx
    mov %ecx, %eax
    out %eax, %dx
    ret

/* pci_find(eax = device << 16 | vendor) -> ebx = its slot << 11 and
 * eax = 1, or eax = 0 if bus 0 has none. Clobbers esi. */
pci_find:
    mov %eax, %esi
    xor %ebx, %ebx
1:  mov %ebx, %eax
    or $0x80000000, %eax
    call pci_read
    cmp %esi, %eax
    je 2f
    add $0x800, %ebx
    cmp $0x10000, %ebx
    jb 1b
    xor %eax, %eax
    ret
2:  mov $1, %eax
    ret

/* pci_bar0(ebx = slot << 11) -> eax = BAR 0's address; memory decoding
 * and bus mastering switched on. */
pci_bar0:
    mov %ebx, %eax
    or $0x80000004, %eax
    mov $6, %ecx
    call pci_write
    mov %ebx, %eax
    or $0x80000010, %eax
    call pci_read
    and $0xfffffff0, %eax
    ret

/* pci_cap(ebx = slot << 11, eax = capability ID) -> esi = its offset, or
 * 0 when the function has none. */
pci_cap:
    push %edi
    mov %eax, %edi
    mov %ebx, %eax
    or $0x80000034, %eax
    call pci_read
    and $0xfc, %eax
1:  mov %eax, %esi
    test %eax, %eax
    jz 9f
    mov %ebx, %eax
    or $0x80000000, %eax
    or %esi, %eax
    call pci_read
    movzbl %al, %ecx
    cmp %edi, %ecx
    je 9f
    shr $8, %eax
    and $0xfc, %eax
    jmp 1b
9:  pop %edi
    ret

/* msix_setup(): the MSI-X test function: MSI-X enabled, entry 0 (VEC to
 * `dest`) unmasked. */
msix_setup:
    push %ebx
    push %esi
    mov $0x53561234, %eax
    call pci_find
    test %eax, %eax
    jnz 1f
    FAIL 10, "no MSI-X test function (1234:5356): run with --test-devices"
1:  call pci_bar0
    mov %eax, msix_bar
    mov $0x11, %eax                 /* MSI-X */
    call pci_cap
    test %esi, %esi
    jnz 2f
    FAIL 11, "the MSI-X test function has no MSI-X capability"
2:  mov %ebx, %eax                  /* message control: enable */
    or $0x80000000, %eax
    or %esi, %eax
    call pci_read
    or $0x80000000, %eax
    mov %eax, %ecx
    mov %ebx, %eax
    or $0x80000000, %eax
    or %esi, %eax
    call pci_write
    mov msix_bar, %esi
    mov dest, %eax
    shl $12, %eax
    or $0xfee00000, %eax
    mov %eax, (%esi)                /* entry 0: address */
    movl $0, 4(%esi)
    movl $VEC, 8(%esi)              /* data */
    movl $0, 12(%esi)               /* unmasked */
    pop %esi
    pop %ebx
    ret

/* edu_setup(): QEMU's edu device (1234:11e8) with MSI (64-bit address
 * capability: data at +12) to VEC at `dest`. */
edu_setup:
    push %ebx
    push %esi
    mov $0x11e81234, %eax
    call pci_find
    test %eax, %eax
    jnz 1f
    FAIL 12, "neither splitvm's MSI test port nor QEMU's edu device"
1:  call pci_bar0
    mov %eax, edu_bar
    mov $0x05, %eax                 /* MSI */
    call pci_cap
    test %esi, %esi
    jnz 2f
    FAIL 13, "edu has no MSI capability"
2:  mov dest, %ecx
    shl $12, %ecx
    or $0xfee00000, %ecx
    lea 4(%esi), %eax
    or $0x80000000, %eax
    or %ebx, %eax
    call pci_write                  /* address low */
    lea 8(%esi), %eax
    or $0x80000000, %eax
    or %ebx, %eax
    xor %ecx, %ecx
    call pci_write                  /* address high */
    lea 12(%esi), %eax
    or $0x80000000, %eax
    or %ebx, %eax
    mov $VEC, %ecx
    call pci_write                  /* data */
    mov %esi, %eax
    or $0x80000000, %eax
    or %ebx, %eax
    call pci_read
    or $0x10000, %eax               /* MSI enable (control bit 0) */
    mov %eax, %ecx
    mov %esi, %eax
    or $0x80000000, %eax
    or %ebx, %eax
    call pci_write
    pop %esi
    pop %ebx
    ret

/* trigger(): one interrupt on the path (t0 already read, for the timer
 * the deadline armed here). */
trigger:
    mov path, %eax
    cmp $1, %eax
    je 1f
    cmp $2, %eax
    je 2f
    cmp $3, %eax
    je 3f
    cmp $4, %eax
    je 4f
    cmp $5, %eax
    je 5f
    cmp $6, %eax
    je 6f
    rdtsc                           /* 7: the deadline is t0 */
    add $2000, %eax
    adc $0, %edx
    mov %eax, t0
    mov %edx, t0 + 4
    mov $MSR_TSC_DEADLINE, %ecx
    wrmsr
    ret
1:  SET_LINE PIC_IRQ, 1             /* 8259: an edge on IRQ 5 */
    SET_LINE PIC_IRQ, 0
    ret
2:  SET_LINE EDGE_PIN, 1
    SET_LINE EDGE_PIN, 0
    ret
3:  SET_LINE LEVEL_PIN, 1
    ret
4:  mov edu_bar, %eax
    test %eax, %eax
    jnz 41f
    mov $MSI_PORT_INJECT, %dx
    outl %eax, %dx
    ret
41: movl $1, 0x60(%eax)             /* edu: raise */
    ret
5:  mov msix_bar, %eax
    movl $0, MSIX_DOORBELL(%eax)
    ret
6:  mov $(ICR_FIXED | VEC), %eax
    mov dest, %edx
    jmp apic_send_ipi

/* setup(): program the path. */
setup:
    mov path, %eax
    cmp $1, %eax
    jne 2f
    call pic_init                   /* LINT0 ExtINT, all masked */
    mov $(0xfb & ~(1 << PIC_IRQ)), %al
    outb %al, $PIC1_DATA
    mov $PIC_VEC, %eax
    mov $mhandler, %edx
    jmp setgate
2:  mov $VEC, %eax
    mov $mhandler, %edx
    call setgate
    mov path, %eax
    cmp $2, %eax
    jne 3f
    mov $EDGE_PIN, %eax
    mov $VEC, %edx                  /* edge, high, fixed, physical */
    mov dest, %ecx
    shl $24, %ecx
    jmp ioapic_set_rte
3:  cmp $3, %eax
    jne 4f
    mov $LEVEL_PIN, %eax
    mov $(VEC | RTE_LEVEL), %edx
    mov dest, %ecx
    shl $24, %ecx
    jmp ioapic_set_rte
4:  cmp $4, %eax
    jne 5f
    mov $MSI_PORT_INJECT, %dx       /* splitvm's MSI test port? */
    in %dx, %eax
    cmp $0xffffffff, %eax
    jne 41f
    jmp edu_setup                   /* QEMU */
41: mov dest, %eax
    shl $12, %eax
    or $0xfee00000, %eax
    mov $MSI_PORT_ADDR_LO, %dx
    outl %eax, %dx
    xor %eax, %eax
    mov $MSI_PORT_ADDR_HI, %dx
    outl %eax, %dx
    mov $VEC, %eax
    mov $MSI_PORT_DATA, %dx
    outl %eax, %dx
    ret
5:  cmp $5, %eax
    jne 7f
    jmp msix_setup
7:  cmp $7, %eax
    jne 9f
    mov $APIC_LVT_TIMER, %eax
    mov $(APIC_TIMER_TSCDEADLINE | VEC), %edx
    jmp apic_write
9:  ret

.globl test_main
test_main:
    push %ebx
    push %esi
    push %edi
    mov $path_key, %eax
    call cmdline_value
    mov %eax, path
    mov $count_key, %eax
    call cmdline_value
    mov %eax, count
    mov $cpus_key, %eax
    call cmdline_value
    test %edx, %edx
    jz 1f
    mov %eax, cpus
1:  mov path, %eax
    dec %eax
    cmp $7, %eax
    jb 2f
    FAIL 1, "path= must be 1 to 7"
2:  cmpl $1, cpus
    je 3f
    cmpl $1, path                   /* the 8259 and the LAPIC timer are vCPU 0's */
    je 21f
    cmpl $7, path
    jne 22f
21: FAIL 2, "this path delivers to vCPU 0 only: use cpus=1"
22: mov $2, %eax
    call smp_start
    mov cpu_apic_id + 4, %eax
    mov %eax, dest
    jmp 4f
3:  mov cpu_apic_id, %eax
    mov %eax, dest

    /* The TSC rate, against the runtime's 1 ms tick. */
4:  rdtsc
    mov %eax, %esi
    mov %edx, %edi
    mov $50, %eax
    call wait_ms
    rdtsc
    sub %esi, %eax
    sbb %edi, %edx
    mov $50, %ecx
    div %ecx
    mov %eax, tsc_khz
    call setup

    mov count, %edi
5:  test %edi, %edi
    jz 9f
    cli
    movl $0, flag
    rdtsc
    mov %eax, t0
    mov %edx, t0 + 4
    call trigger
    cmpl $1, cpus
    jne 7f
6:  sti                             /* vCPU 0 waits halted */
    hlt
    cli
    cmpl $0, flag
    je 6b
    jmp 8f
7:  pause                           /* vCPU 1 takes it */
    cmpl $0, flag
    je 7b
8:  mov h_tsc, %eax
    mov h_tsc + 4, %edx
    mov $t0, %ecx
    mov $hist_lat, %ebx
    call add_sample
    mov e_tsc, %eax
    mov e_tsc + 4, %edx
    mov $h_tsc, %ecx
    mov $hist_eoi, %ebx
    call add_sample
    dec %edi
    jmp 5b

9:  PUTS "tsc_khz "
    mov tsc_khz, %eax
    call puthex
    PRINT ""
    mov $lat_name, %eax
    mov $hist_lat, %ebx
    call print_hist
    mov $eoi_name, %eax
    mov $hist_eoi, %ebx
    call print_hist
    pop %edi
    pop %esi
    pop %ebx
    xor %eax, %eax
    ret

.section .rodata
lat_name: .asciz "hist_latency"
eoi_name: .asciz "hist_handler_to_eoi"
