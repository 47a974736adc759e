"""Instruction classes read from aarch64 disassembly (no cross tools needed: fixed objdump text)."""

from __future__ import annotations

from pdlink.bench.instruction_mix import classify, parse_disassembly, summarize

OBJDUMP = """
lib0.o:     file format elf64-littleaarch64

Disassembly of section .text:

0000000000000000 <linear_swiglu>:
       0:	and	v6.16b, v22.16b, v15.16b
       4:	ucvtf	v16.4s, v16.4s
       8:	fmla	v28.4s, v4.4s, v21.4s
       c:	fmla	v27.4s, v2.4s, v3.4s
      10:	fmul	v26.4s, v6.4s, v3.4s
      14:	fmadd	s0, s1, s2, s0
      18:	adrp	x0, 0 <linear_swiglu>
			18: R_AARCH64_ADR_PREL_PG_HI21	.text+0x40
      1c:	add	x0, x0, #0x0
			1c: R_AARCH64_ADD_ABS_LO12_NC	.text+0x40

0000000000000020 <scalar_loop>:
      20:	ldr	s1, [x0], #4
      24:	fmadd	s0, s1, s2, s0
      28:	sdot	v0.4s, v1.16b, v2.16b
      2c:	b.ne	20 <scalar_loop>
      30:	ret
      40:	fmla	v1.4s, v2.4s, v3.4s
      44:	ret
"""


def test_classes_of_neon_and_scalar_instructions():
    assert classify("fmla", "v28.4s, v4.4s, v21.4s") == "vector_fma"
    assert classify("fmadd", "s0, s1, s2, s0") == "scalar_fp"
    assert classify("ucvtf", "v16.4s, v16.4s") == "vector_convert"
    assert classify("udot", "v0.4s, v1.16b, v2.16b") == "dot_product"
    assert classify("add", "x0, x0, #4") is None


def test_counts_per_function():
    functions = parse_disassembly(OBJDUMP)
    assert set(functions) == {"linear_swiglu", "scalar_loop"}
    mix = summarize(functions["linear_swiglu"])
    # the unnamed body at 0x40 (a parallel lambda) is credited to the function that passes its address
    assert mix["instructions"] == 10 and mix["vector_fma"] == 3 and mix["vector_convert"] == 1
    assert mix["vector_fp"] == 1 and mix["scalar_fp"] == 1 and mix["top"]["fmla"] == 3
    loop = summarize(functions["scalar_loop"])
    assert loop["scalar_fp"] == 1 and loop["dot_product"] == 1 and loop["vector_fma"] == 0


TAIL_CALL = """
0000000000000000 <__tvm_ffi_linear4>:
       0:	cbz	x1, 8 <__tvm_ffi_linear4+0x8>
       4:	b	10 <linear4_compute_>
       8:	b	0 <__tvm_ffi_linear4>

0000000000000010 <linear4_compute_>:
      10:	ucvtf	v16.4s, v16.4s
      14:	fmla	v28.4s, v4.4s, v21.4s
      18:	ret
"""


def test_a_kernels_compute_function_reached_by_a_tail_call_is_credited_to_the_kernel():
    mix = summarize(parse_disassembly(TAIL_CALL)["__tvm_ffi_linear4"])
    assert mix["vector_fma"] == 1 and mix["vector_convert"] == 1 and mix["instructions"] == 6
