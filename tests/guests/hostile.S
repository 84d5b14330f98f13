/*
 * hostile - a guest that attacks every surface splitvm exposes, from a
 * fixed seed, and then exits 0 if it is still alive.
 *
 * The seed is the last number on the command line (splitvm run --cmdline
 * "seed=N"). A xorshift32 generator picks ITERATIONS operations:
 *   - port I/O of every width anywhere in the port space, except the
 *     ports that would end the run on purpose (0x64 i8042 reset, 0xCF8-0xCFB
 *     PCI config/reset control, 0xF4 debug-exit, 0x220C MSI inject);
 *   - PCI configuration cycles to random bus/device/function/offset;
 *   - I/O APIC garbage: random IOREGSEL (reserved registers included),
 *     random RTE contents (reserved delivery modes, vectors < 16), EOI
 *     register writes, and pc-testdev pin toggles that make pins fire;
 *   - MMIO of every width over the MMIO hole (virtio-mmio windows, BARs,
 *     the MSI-X tables and PBAs in them), never the LAPIC or I/O APIC page;
 *   - virtio-mmio devices set up with one queue of garbage descriptors
 *     (loops in `next`, huge lengths, indirect tables of garbage, addresses
 *     outside RAM or above 4 GiB) and notified with random avail indices;
 *   - queue shapes (both transports: virtio-mmio registers, and the
 *     virtio-pci common configuration of every virtio device on bus 0):
 *     sizes 8, 256, 32768, 65535 or random, rings in the image's own
 *     buffers, right below the end of RAM, or straddling it, then a
 *     notify. (Sizes 32768/65535 with rings at the end of RAM once made a
 *     vCPU thread shrink its malloc arena and end the VM under seccomp.)
 * Interrupts stay disabled (IF=0) so nothing is taken; RTEs that would
 * deliver NMI/SMI/INIT/ExtINT are written masked (they would stop or reset
 * this guest, which is not the point). Descriptor addresses never point at
 * this guest's image, so a device writing guest memory cannot kill it.
 */
.include "guest.inc"

.section .rodata
.globl test_name
test_name: .asciz "hostile"
seed_key:  .asciz "seed="

.equ ITERATIONS,   20000
.equ VMMIO_BASE,   0xd0000000
.equ SCRATCH,      0x01000000      /* 16 MiB: garbage buffers live here */
.equ VQ_NUM,       8

.data
.align 4
rng:        .long 0x9e3779b9
ops_done:   .long 0
ram_end:    .long 0x02000000   /* from multiboot mem_upper (test_main) */
sizes:      .long 8, 256, 32768, 65535

.bss
.align 4096
vq_desc:    .skip 4096
vq_avail:   .skip 4096
vq_used:    .skip 4096
ind_tab:    .skip 4096

.text
/* eax = next xorshift32 value; clobbers edx */
rand:
    mov rng, %eax
    mov %eax, %edx
    shl $13, %edx
    xor %edx, %eax
    mov %eax, %edx
    shr $17, %edx
    xor %edx, %eax
    mov %eax, %edx
    shl $5, %edx
    xor %edx, %eax
    mov %eax, rng
    ret

/* Seed from "seed=N" on the multiboot command line. */
parse_seed:
    mov $seed_key, %eax
    call cmdline_value
    test %edx, %edx
    jz 9f
    xor $0x9e3779b9, %eax       /* seed 0 must not give state 0 */
    jnz 5f
    inc %eax
5:  mov %eax, rng
9:  ret

/* Port I/O: eax = random word selecting port, width, direction. */
do_port:
    push %ebx
    mov %eax, %ebx
    movzwl %bx, %edx
    mov %edx, %ecx
    and $0xfffc, %ecx
    cmp $0x64, %ecx
    je 9f
    cmp $0xcf8, %ecx
    je 9f
    cmp $0xf4, %ecx
    je 9f
    cmp $0x220c, %ecx
    je 9f
    call rand                   /* value in eax; dx was clobbered */
    movzwl %bx, %edx
    bt $18, %ebx
    jc 5f
    /* out */
    bt $16, %ebx
    jc 1f
    out %al, (%dx)
    jmp 9f
1:  bt $17, %ebx
    jc 2f
    out %ax, (%dx)
    jmp 9f
2:  out %eax, (%dx)
    jmp 9f
5:  /* in */
    bt $16, %ebx
    jc 6f
    in (%dx), %al
    jmp 9f
6:  bt $17, %ebx
    jc 7f
    in (%dx), %ax
    jmp 9f
7:  in (%dx), %eax
9:  pop %ebx
    ret

/* PCI configuration cycle: mostly bus 0. */
do_pci:
    push %ebx
    mov %eax, %ebx
    and $0x00fffffc, %eax
    bt $28, %ebx
    jc 1f
    and $0x0000fffc, %eax       /* bus 0 */
1:  or $0x80000000, %eax
    mov $0xcf8, %edx
    out %eax, (%dx)
    call rand
    mov %eax, %ecx
    mov %ebx, %edx
    and $3, %edx
    add $0xcfc, %edx
    bt $29, %ebx
    jc 5f
    bt $30, %ebx
    jc 2f
    mov %cl, %al
    out %al, (%dx)
    jmp 9f
2:  and $0xcfc, %edx
    mov %ecx, %eax
    out %eax, (%dx)
    jmp 9f
5:  in (%dx), %al
    and $0xcfc, %edx
    in (%dx), %eax
9:  pop %ebx
    ret

/* I/O APIC garbage and pin toggles. */
do_ioapic:
    push %ebx
    mov %eax, %ebx
    movzbl %bl, %eax
    mov %eax, IOAPIC_REGSEL
    call rand
    mov %ebx, %ecx
    shr $8, %ecx
    and $3, %ecx
    jz 1f
    cmp $1, %ecx
    je 2f
    cmp $2, %ecx
    je 3f
    /* pc-testdev: toggle a pin (0..23) */
    mov %ebx, %edx
    shr $16, %edx
    and $0x1f, %edx
    cmp $24, %edx
    jae 9f
    add $TESTDEV_IRQ_BASE, %edx
    and $1, %eax
    out %al, (%dx)
    jmp 9f
1:  /* window write; low RTE words that would deliver NMI/SMI/INIT/ExtINT go masked */
    movzbl %bl, %ecx
    cmp $0x10, %ecx
    jb 4f
    test $1, %ecx
    jnz 4f
    mov %eax, %ecx
    shr $8, %ecx
    and $7, %ecx
    cmp $2, %ecx
    je 5f
    cmp $4, %ecx
    je 5f
    cmp $5, %ecx
    je 5f
    cmp $7, %ecx
    jne 4f
5:  or $RTE_MASKED, %eax
4:  mov %eax, IOAPIC_WIN
    jmp 9f
2:  mov IOAPIC_WIN, %eax        /* window read */
    jmp 9f
3:  mov %eax, IOAPIC_EOIREG     /* EOI register */
9:  pop %ebx
    ret

/* MMIO over the hole: virtio-mmio windows, the BAR area, anywhere else. */
do_mmio:
    push %ebx
    push %esi
    mov %eax, %ebx
    mov %eax, %esi
    bt $30, %ebx
    jc 1f
    and $0x3ffc, %esi
    add $VMMIO_BASE, %esi       /* the first four virtio-mmio windows */
    jmp 3f
1:  bt $31, %ebx
    jc 2f
    and $0x00fffffc, %esi
    add $0xc0000000, %esi       /* where BARs are placed first */
    jmp 3f
2:  and $0x3e7ffffc, %esi
    add $0xc0000000, %esi       /* below 0xfe800000: never LAPIC/I/O APIC */
3:  call rand
    bt $29, %ebx
    jc 6f
    bt $28, %ebx
    jc 4f
    movb %al, (%esi)
    jmp 9f
4:  bt $27, %ebx
    jc 5f
    movw %ax, (%esi)
    jmp 9f
5:  movl %eax, (%esi)
    jmp 9f
6:  movl (%esi), %eax
    movzbl 1(%esi), %eax
9:  pop %esi
    pop %ebx
    ret

/* Fill the 16-byte descriptor at %edi with garbage whose addresses never
 * touch this guest's image. */
garbage_desc:
    push %ebx
    call rand
    mov %eax, %ebx
    call rand
    mov %ebx, %ecx
    and $3, %ecx
    jz 1f
    cmp $1, %ecx
    je 2f
    cmp $2, %ecx
    je 3f
    /* addr above 4 GiB */
    mov %eax, (%edi)
    mov %ebx, 4(%edi)
    orl $1, 4(%edi)
    jmp 4f
1:  /* in the scratch area, holding a plausible request header: type
     * 0-15 (read, write, flush, get-id, unknown), sector inside or past
     * the end of a small disk */
    and $0x00fffff0, %eax
    add $SCRATCH, %eax
    mov %eax, (%edi)
    movl $0, 4(%edi)
    mov %eax, %ecx
    call rand
    mov %eax, %edx
    and $0xf, %edx
    mov %edx, (%ecx)
    movl $0, 4(%ecx)
    shr $8, %eax
    and $0xfff, %eax
    mov %eax, 8(%ecx)
    movl $0, 12(%ecx)
    jmp 4f
2:  /* outside RAM, in the MMIO hole or the gap below it */
    or $0x80000000, %eax
    mov %eax, (%edi)
    movl $0, 4(%edi)
    jmp 4f
3:  /* an indirect table of garbage */
    movl $ind_tab, (%edi)
    movl $0, 4(%edi)
4:  call rand
    bt $0, %ebx
    jc 5f
    and $0xfff, %eax            /* small length */
5:  mov %eax, 8(%edi)           /* or a huge one */
    call rand
    and $0x0007000f, %eax       /* flags NEXT|WRITE|INDIRECT, next 0..15 */
    mov %eax, %ecx
    shr $16, %ecx
    mov %cx, 12(%edi)
    mov %ax, 14(%edi)
    pop %ebx
    ret

/* Set up queue 0 of the virtio-mmio device at %esi with garbage and notify. */
do_virtq:
    push %ebx
    push %esi
    push %edi
    mov %eax, %ebx
    mov $VMMIO_BASE, %esi
    test $1, %ebx
    jz 1f
    add $0x1000, %esi
1:  cmpl $0x74726976, (%esi)    /* "virt" */
    jne 9f
    movl $0, 0x70(%esi)         /* reset */
    movl $1, 0x70(%esi)         /* ACKNOWLEDGE */
    movl $3, 0x70(%esi)         /* DRIVER */
    movl $1, 0x24(%esi)         /* DriverFeaturesSel 1 */
    movl $1, 0x20(%esi)         /* VIRTIO_F_VERSION_1 */
    movl $0xb, 0x70(%esi)       /* FEATURES_OK */
    movl $0, 0x30(%esi)         /* QueueSel 0 */
    bt $3, %ebx                 /* half the time another queue shape */
    jc 7f
    movl $VQ_NUM, 0x38(%esi)
    movl $vq_desc, 0x80(%esi)
    movl $0, 0x84(%esi)
    movl $vq_avail, 0x90(%esi)
    movl $0, 0x94(%esi)
    movl $vq_used, 0xa0(%esi)
    movl $0, 0xa4(%esi)
    jmp 8f
7:  push %ebx
    call pick_size
    mov %eax, 0x38(%esi)
    movzwl %ax, %edi
    mov %edi, %ecx
    mov $vq_desc, %ebx
    call pick_ring
    mov %eax, 0x80(%esi)
    movl $0, 0x84(%esi)
    mov %edi, %ecx
    mov $vq_avail, %ebx
    call pick_ring
    mov %eax, 0x90(%esi)
    movl $0, 0x94(%esi)
    mov %edi, %ecx
    mov $vq_used, %ebx
    call pick_ring
    mov %eax, 0xa0(%esi)
    movl $0, 0xa4(%esi)
    pop %ebx
8:
    movl $1, 0x44(%esi)         /* QueueReady */
    movl $0xf, 0x70(%esi)       /* DRIVER_OK */
    /* garbage descriptors and indirect table entries */
    mov $vq_desc, %edi
2:  call garbage_desc
    add $16, %edi
    cmp $vq_desc + 16 * VQ_NUM, %edi
    jb 2b
    mov $ind_tab, %edi
3:  call garbage_desc
    add $16, %edi
    cmp $ind_tab + 16 * 16, %edi
    jb 3b
    /* four notifications with random avail indices and ring entries */
    mov $4, %edi
4:  call rand
    movw $0, vq_avail
    mov %eax, %ecx
    and $0xc0000000, %ecx
    cmp $0xc0000000, %ecx
    je 5f
    and $7, %eax                /* idx: a few requests (3 times in 4) */
5:  mov %ax, vq_avail + 2       /* or far ahead of the queue */
    call rand
    mov %eax, %ecx
    and $0x00070007, %eax       /* ring entries: heads 0..7 */
    bt $31, %ecx
    jnc 6f
    mov %ecx, %eax              /* or garbage */
6:  mov %eax, vq_avail + 4
    and $0x00070007, %ecx
    mov %ecx, vq_avail + 8
    movl $0, 0x50(%esi)         /* QueueNotify */
    dec %edi
    jnz 4b
9:  pop %edi
    pop %esi
    pop %ebx
    ret

/* eax = a queue size: 8, 256, 32768, 65535 or a random 16-bit value. */
pick_size:
    call rand
    test $4, %eax
    jz 1f
    and $3, %eax
    mov sizes(,%eax,4), %eax
    ret
1:  shr $16, %eax
    ret

/* eax = a ring address for a queue of ecx entries: one of the image's
 * own buffers (ebx = which), right below the end of RAM (room for the
 * largest ring, 16 bytes an entry, rounded to pages), or straddling it. */
pick_ring:
    push %ecx
    call rand
    pop %ecx
    and $3, %eax
    jz 3f
    cmp $1, %eax
    je 2f
    mov ram_end, %eax           /* fits right below the end */
    shl $4, %ecx
    add $0x1fff, %ecx
    and $~0xfff, %ecx
    sub %ecx, %eax
    ret
2:  mov ram_end, %eax           /* straddles the end */
    sub $0x40, %eax
    ret
3:  mov %ebx, %eax
    ret

/* Shape queue 0 of the virtio-pci device whose BAR 0 is at %esi: reset,
 * features, a size and rings from pick_size/pick_ring, enable, DRIVER_OK,
 * notify. */
pci_shape_queue:
    push %ebx
    push %edi
    movb $0, 0x14(%esi)         /* device_status: reset */
    movb $1, 0x14(%esi)
    movb $3, 0x14(%esi)
    movl $1, 0x08(%esi)         /* driver_feature_select 1 */
    movl $1, 0x0c(%esi)         /* VIRTIO_F_VERSION_1 */
    movb $0xb, 0x14(%esi)       /* FEATURES_OK */
    movw $0, 0x16(%esi)         /* queue_select 0 */
    call pick_size
    mov %eax, %edi
    mov %ax, 0x18(%esi)         /* queue_size */
    movzwl %di, %ecx
    mov $vq_desc, %ebx
    call pick_ring
    mov %eax, 0x20(%esi)        /* queue_desc */
    movl $0, 0x24(%esi)
    movzwl %di, %ecx
    mov $vq_avail, %ebx
    call pick_ring
    mov %eax, 0x28(%esi)        /* queue_driver */
    movl $0, 0x2c(%esi)
    movzwl %di, %ecx
    mov $vq_used, %ebx
    call pick_ring
    mov %eax, 0x30(%esi)        /* queue_device */
    movl $0, 0x34(%esi)
    movw $1, 0x1c(%esi)         /* queue_enable */
    movb $0xf, 0x14(%esi)       /* DRIVER_OK */
    call rand
    mov %ax, vq_avail + 2       /* (used when the rings are ours) */
    movzwl 0x1e(%esi), %eax     /* queue_notify_off */
    and $0x3ff, %eax
    movl $0, 0x3000(%esi,%eax,4)
    pop %edi
    pop %ebx
    ret

/* PCI configuration dword at %eax (0x80000000 | bdf | reg): read into
 * eax; write ecx. */
pci_read:
    mov $0xcf8, %edx
    out %eax, (%dx)
    mov $0xcfc, %edx
    in (%dx), %eax
    ret
pci_write:
    mov $0xcf8, %edx
    out %eax, (%dx)
    mov $0xcfc, %edx
    mov %ecx, %eax
    out %eax, (%dx)
    ret

/* Every virtio device (vendor 0x1af4) on bus 0: BAR 0 placed at
 * 0xc1000000 + slot * 64 KiB (the random config cycles may have moved or
 * disabled it), memory decoding and bus mastering on, queue 0 shaped. */
do_virtq_pci:
    push %ebx
    push %esi
    mov $1, %ebx                /* slot */
1:  mov %ebx, %eax
    shl $11, %eax
    or $0x80000000, %eax
    call pci_read
    cmp $0x1af4, %ax
    jne 8f
    mov %ebx, %ecx
    shl $16, %ecx
    add $0xc1000000, %ecx
    mov %ecx, %esi
    mov %ebx, %eax
    shl $11, %eax
    or $0x80000010, %eax        /* BAR 0 */
    call pci_write
    mov $6, %ecx                /* command: memory + bus master */
    mov %ebx, %eax
    shl $11, %eax
    or $0x80000004, %eax
    call pci_write
    call pci_shape_queue
8:  inc %ebx
    cmp $32, %ebx
    jb 1b
    pop %esi
    pop %ebx
    ret

.globl test_main
test_main:
    cli
    push %ebx
    push %esi
    mov mb_info, %eax           /* RAM end = 1 MiB + mem_upper KiB */
    test %eax, %eax
    jz 1f
    testl $1, (%eax)
    jz 1f
    mov 8(%eax), %eax
    shl $10, %eax
    add $0x100000, %eax
    mov %eax, ram_end
1:  call parse_seed
    PRINT_DEC "seed state ", rng
    mov $ITERATIONS, %esi
1:  call rand
    mov %eax, %ebx
    call rand
    mov %ebx, %ecx
    shr $29, %ecx               /* op: 0-2 port, 3 pci, 4 ioapic, 5-6 mmio, 7 virtq */
    cmp $3, %ecx
    jb 2f
    je 3f
    cmp $4, %ecx
    je 4f
    cmp $7, %ecx
    je 5f
    call do_mmio
    jmp 8f
2:  call do_port
    jmp 8f
3:  call do_pci
    jmp 8f
4:  call do_ioapic
    jmp 8f
5:  bt $2, %ebx                 /* virtio: mmio or pci, half each */
    jc 6f
    call do_virtq
    jmp 8f
6:  call do_virtq_pci
8:  incl ops_done
    dec %esi
    jnz 1b
    PRINT_DEC "operations ", ops_done
    pop %esi
    pop %ebx
    xor %eax, %eax
    ret
