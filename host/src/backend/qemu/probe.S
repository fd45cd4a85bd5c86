# The KVM probe guest (accel.rs): a boot sector that goes from real mode straight to
# 64-bit long mode with paging on (identity-mapped first 2 MiB in one large page), the way
# every Linux guest runs, then writes 'L' to the serial port and leaves through QEMU's
# isa-debug-exit device (exit status (0x10 << 1) | 1 = 33). A KVM that cannot run a real
# guest usually fails at one of these steps (CR0/CR4/EFER writes, the first paged access,
# the far jump into a 64-bit segment) rather than on real-mode port I/O alone.
#
# probe.bin is this file assembled; accel.rs embeds it, and a test re-assembles it where
# binutils are installed:
#   as --32 -o probe.o probe.S && ld -m elf_i386 -Ttext=0x7c00 --oformat binary -o probe.bin probe.o
    .intel_syntax noprefix
    .code16
    .globl _start
_start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7c00
    cld
    mov di, 0x1000
    xor eax, eax
    mov cx, 3072
    rep stosd
    mov dword ptr [0x1000], 0x2003
    mov dword ptr [0x2000], 0x3003
    mov dword ptr [0x3000], 0x83
    lgdt [gdt_desc]
    mov eax, cr4
    or eax, 0x20
    mov cr4, eax
    mov eax, 0x1000
    mov cr3, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, 0x100
    wrmsr
    mov eax, cr0
    or eax, 0x80000001
    mov cr0, eax
    ljmp 0x08, offset long_mode
    .code64
long_mode:
    mov dx, 0x3f8
    mov al, 'L'
    out dx, al
    mov dx, 0xf4
    mov al, 0x10
    out dx, al
    cli
1:  hlt
    jmp 1b
    .p2align 3
gdt:
    .quad 0
    .quad 0x00209A0000000000
gdt_desc:
    .word gdt_desc - gdt - 1
    .long gdt
    .org 510
    .word 0xaa55
