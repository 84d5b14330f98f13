/* scripts/bench-interrupt-guest.S: the guest of the side-by-side part of
 * scripts/bench-interrupt-paths.sh (COUNT and MODE are set when assembling). */
/* Side-by-side guest: a multiboot ELF32 that runs unchanged under splitvm
 * and QEMU (pc-testdev, isa-debug-exit; MSI from QEMU's edu device, or
 * splitvm's MSI test port when there is no edu). MODE 1 level pin 11,
 * 2 edge pin 10, 3 MSI, 4 floor: a bare port write, no interrupt. */
.code32
.text
.globl _start
.align 4
mb_header:
  .long 0x1badb002
  .long 0
  .long -0x1badb002
_start:
  cli
  lgdt gdtr
  ljmp $0x08, $1f
1:
  mov $0x10, %ax
  mov %ax, %ds
  mov %ax, %es
  mov %ax, %ss
  mov %ax, %fs
  mov %ax, %gs
  mov $0x80000, %esp
  /* Nothing from the 8259s or LINT0 (firmware may have left them on). */
  mov $0xff, %al
  outb %al, $0x21
  outb %al, $0xa1
  movl $0x10000, 0xfee00350
  xor %ecx, %ecx
1: mov $hdef, %eax
  call setgate
  inc %ecx
  cmp $256, %ecx
  jne 1b
  mov $0x41, %ecx
  mov $hlevel, %eax
  call setgate
  mov $0x42, %ecx
  mov $heoi, %eax
  call setgate
  mov $0x45, %ecx
  mov $heoi, %eax
  call setgate
  lidt idtr
  movl $0x1ff, 0xfee000f0
.if MODE == 1
  movl $0x27, 0xfec00000
  movl $0, 0xfec00010
  movl $0x26, 0xfec00000
  movl $0x8041, 0xfec00010
.endif
.if MODE == 2
  movl $0x25, 0xfec00000
  movl $0, 0xfec00010
  movl $0x24, 0xfec00000
  movl $0x0042, 0xfec00010
.endif
.if MODE == 3
  call find_edu
  test %eax, %eax
  jnz 5f
  /* No edu: splitvm's MSI test port. */
  mov $0x2200, %dx
  mov $0xfee00000, %eax
  outl %eax, %dx
  mov $0x2204, %dx
  xor %eax, %eax
  outl %eax, %dx
  mov $0x2208, %dx
  mov $0x45, %eax
  outl %eax, %dx
5:
.endif
  mov $COUNT, %edi
  rdtsc
  mov %eax, tsc0
  mov %edx, tsc0 + 4
2:
.if MODE == 1
  mov $1, %al
  mov $0x200b, %dx
  outb %al, %dx
.endif
.if MODE == 2
  mov $1, %al
  mov $0x200a, %dx
  outb %al, %dx
  xor %al, %al
  outb %al, %dx
.endif
.if MODE == 3
  mov edu_bar, %eax
  test %eax, %eax
  jz 6f
  movl $1, 0x60(%eax)
  jmp 7f
6: mov $0x220c, %dx
  outl %eax, %dx
7:
.endif
.if MODE == 4
  outb %al, $0xe0
.else
  sti
  hlt
  cli
.endif
  dec %edi
  jnz 2b
  /* The loop's TSC ticks, as "TSC <16 hex digits>" on COM1. */
  rdtsc
  sub tsc0, %eax
  sbb tsc0 + 4, %edx
  mov %eax, %esi
  mov %edx, %edi
  mov $0x3f8, %dx
  mov $'T', %al
  outb %al, %dx
  mov $'S', %al
  outb %al, %dx
  mov $'C', %al
  outb %al, %dx
  mov $' ', %al
  outb %al, %dx
  mov %edi, %eax
  call puthex32
  mov %esi, %eax
  call puthex32
  mov $0x3f8, %dx
  mov $'\n', %al
  outb %al, %dx
  mov $0xf4, %dx
  xor %eax, %eax
  outl %eax, %dx
3: hlt
  jmp 3b

/* puthex32(eax): 8 hex digits on COM1. */
puthex32:
  mov %eax, %ebx
  mov $8, %ecx
1: rol $4, %ebx
  mov %ebx, %eax
  and $0xf, %eax
  movb hexdig(%eax), %al
  mov $0x3f8, %dx
  outb %al, %dx
  dec %ecx
  jnz 1b
  ret

/* cfg_addr(ebx = device, ecx = register) -> eax = CONFIG_ADDRESS */
cfg_addr:
  mov %ebx, %eax
  shl $11, %eax
  or %ecx, %eax
  or $0x80000000, %eax
  ret
cfg_read: /* ebx dev, ecx reg -> eax */
  call cfg_addr
  mov $0xcf8, %dx
  outl %eax, %dx
  mov $0xcfc, %dx
  inl %dx, %eax
  ret
cfg_write: /* ebx dev, ecx reg, esi value */
  call cfg_addr
  mov $0xcf8, %dx
  outl %eax, %dx
  mov $0xcfc, %dx
  mov %esi, %eax
  outl %eax, %dx
  ret
/* find_edu() -> eax = 1 with edu_bar set and MSI vector 0x45 enabled, else 0 */
find_edu:
  xor %ebx, %ebx
1: xor %ecx, %ecx
  call cfg_read
  cmp $0x11e81234, %eax
  je 2f
  inc %ebx
  cmp $32, %ebx
  jne 1b
  xor %eax, %eax
  ret
2: mov $0x10, %ecx
  call cfg_read
  and $0xfffffff0, %eax
  mov %eax, edu_bar
  mov $0x04, %ecx
  call cfg_read
  or $0x6, %eax                   /* memory space, bus master */
  and $0xffff, %eax
  mov %eax, %esi
  call cfg_write
  mov $0x34, %ecx
  call cfg_read
  and $0xfc, %eax
3: test %eax, %eax
  jz 9f
  mov %eax, %ecx
  push %ecx
  call cfg_read
  pop %ecx
  cmp $0x05, %al
  je 4f
  shr $8, %eax
  and $0xfc, %eax
  jmp 3b
4: mov %ecx, %edi                 /* MSI capability */
  lea 4(%edi), %ecx
  mov $0xfee00000, %esi
  call cfg_write
  lea 8(%edi), %ecx
  xor %esi, %esi
  call cfg_write
  lea 12(%edi), %ecx
  mov $0x45, %esi
  call cfg_write
  mov %edi, %ecx
  call cfg_read
  or $0x10000, %eax               /* MSI enable (control bit 0) */
  mov %eax, %esi
  mov %edi, %ecx
  call cfg_write
  mov $1, %eax
  ret
9: movl $0, edu_bar
  xor %eax, %eax
  ret

setgate:
  lea idt(,%ecx,8), %edx
  mov %ax, (%edx)
  movw $0x08, 2(%edx)
  movw $0x8e00, 4(%edx)
  shr $16, %eax
  mov %ax, 6(%edx)
  ret
.macro IRETF
  push %eax
  mov 4(%esp), %eax
  xchg %eax, 12(%esp)
  mov %eax, 8(%esp)
  pop %eax
  add $4, %esp
  popfl
  ret
.endm
hdef:
  IRETF
hlevel:
  push %eax
  push %edx
  mov $0x200b, %dx
  xor %al, %al
  outb %al, %dx
  movl $0, 0xfee000b0
  pop %edx
  pop %eax
  IRETF
heoi:
  movl $0, 0xfee000b0
  IRETF
.data
.align 8
gdt:
  .quad 0
  .quad 0x00cf9a000000ffff
  .quad 0x00cf92000000ffff
gdtr:
  .word 3*8-1
  .long gdt
.align 8
idtr:
  .word 256*8-1
  .long idt
edu_bar: .long 0
tsc0: .long 0, 0
hexdig: .ascii "0123456789abcdef"
.bss
.align 8
idt:
  .skip 256*8
