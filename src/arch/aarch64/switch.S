/*
 * aarch64 AAPCS64 context switch.
 *
 * void pz__arch_switch(void **save_sp, void *load_sp)
 *
 * Saves the registers a call must preserve (x19-x28, the frame pointer x29,
 * the link register x30 and the low halves d8-d15 of v8-v15) on the running
 * stack, stores sp in *save_sp, loads load_sp and restores the state saved
 * there.  No system call, no signal mask.
 *
 * Frame layout (160 bytes, 16-byte aligned):
 *   [sp+0]   x19 x20   [sp+16] x21 x22   [sp+32] x23 x24   [sp+48] x25 x26
 *   [sp+64]  x27 x28   [sp+80] x29 x30   [sp+96] d8 d9     [sp+112] d10 d11
 *   [sp+128] d12 d13   [sp+144] d14 d15
 */
	.text
	.globl	pz__arch_switch
	.type	pz__arch_switch, %function
	.p2align 4
pz__arch_switch:
	sub	sp, sp, #160
	stp	x19, x20, [sp, #0]
	stp	x21, x22, [sp, #16]
	stp	x23, x24, [sp, #32]
	stp	x25, x26, [sp, #48]
	stp	x27, x28, [sp, #64]
	stp	x29, x30, [sp, #80]
	stp	d8, d9, [sp, #96]
	stp	d10, d11, [sp, #112]
	stp	d12, d13, [sp, #128]
	stp	d14, d15, [sp, #144]
	mov	x9, sp
	str	x9, [x0]
	mov	sp, x1
	ldp	x19, x20, [sp, #0]
	ldp	x21, x22, [sp, #16]
	ldp	x23, x24, [sp, #32]
	ldp	x25, x26, [sp, #48]
	ldp	x27, x28, [sp, #64]
	ldp	x29, x30, [sp, #80]
	ldp	d8, d9, [sp, #96]
	ldp	d10, d11, [sp, #112]
	ldp	d12, d13, [sp, #128]
	ldp	d14, d15, [sp, #144]
	add	sp, sp, #160
	ret
	.size	pz__arch_switch, .-pz__arch_switch

/*
 * First code of a new context, reached through the restored x30.
 * pz__arch_context_init put the entry function in x19 and its argument in
 * x20.  The entry never returns.
 */
	.globl	pz__arch_context_start
	.type	pz__arch_context_start, %function
	.p2align 4
pz__arch_context_start:
	mov	x29, #0
	mov	x30, #0
	mov	x0, x20
	blr	x19
	brk	#0
	.size	pz__arch_context_start, .-pz__arch_context_start

	.section .note.GNU-stack,"",%progbits
