/*
 * x86_64 System V context switch.
 *
 * void pz__arch_switch(void **save_sp, void *load_sp)
 *
 * Saves the callee-saved state of the running context on its own stack,
 * stores the resulting stack pointer in *save_sp, loads load_sp and pops the
 * state saved there.  Only what the ABI says a call preserves is saved:
 * rbx, rbp, r12-r15, the MXCSR control bits and the x87 control word.
 * Nothing touches the signal mask, so a switch makes no system call.
 *
 * Frame layout, from the saved stack pointer upwards:
 *   [sp+0]  MXCSR (4 bytes), x87 control word (2 bytes), padding
 *   [sp+8]  r15, r14, r13, r12, rbx, rbp
 *   [sp+56] return address
 */
	.text
	.globl	pz__arch_switch
	.type	pz__arch_switch, @function
	.p2align 4
pz__arch_switch:
	.cfi_startproc
	pushq	%rbp
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	subq	$8, %rsp
	stmxcsr	(%rsp)
	fnstcw	4(%rsp)
	movq	%rsp, (%rdi)
	movq	%rsi, %rsp
	ldmxcsr	(%rsp)
	fldcw	4(%rsp)
	addq	$8, %rsp
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbx
	popq	%rbp
	ret
	.cfi_endproc
	.size	pz__arch_switch, .-pz__arch_switch

/*
 * First instruction a new context executes, reached by the ret above.
 * pz__arch_context_init stored the entry function in r12 and its argument in
 * r13.  The stack pointer is 16-byte aligned here, so the call leaves the
 * callee with the alignment the ABI promises.  The entry never returns.
 */
	.globl	pz__arch_context_start
	.type	pz__arch_context_start, @function
	.p2align 4
pz__arch_context_start:
	.cfi_startproc
	.cfi_undefined rip
	xorl	%ebp, %ebp
	movq	%r13, %rdi
	callq	*%r12
	ud2
	.cfi_endproc
	.size	pz__arch_context_start, .-pz__arch_context_start

	.section .note.GNU-stack,"",@progbits
