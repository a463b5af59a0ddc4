"""The SASS counting behind ``static_check.py``'s instructions per element: canned listings (no
tools needed), then tiny kernels compiled here (Triton for sm_90, nvcc) whose counts were read off
their SASS by hand.

    pytest benchmarks/test_static_check.py
"""
from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import kernel_models  # noqa: E402
import sass_cfg  # noqa: E402
import static_check  # noqa: E402
from sass_cfg import Path as SassPath  # noqa: E402


def listing(body, name="k"):
    """cuobjdump's layout for compact ``addr [guard] OP operands`` lines (``.L_x_N:`` lines kept)."""
    out = [f"\t\tFunction : {name}", '\t.headerflags\t@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"']
    for line in textwrap.dedent(body).strip().splitlines():
        if line.endswith(":"):
            out.append(line)
            continue
        addr, rest = line.split(" ", 1)
        out.append(f"        /*{addr}*/                   {rest} ;                 /* 0x000000000000794d */")
        out.append("                                                                 /* 0x000fea0003800000 */")
    return "\n".join(out) + "\n"


def cost_of(body, **kw):
    funcs = sass_cfg.parse_listing(listing(body))
    return sass_cfg.analyse(funcs["k"], **kw)


# A real listing, verbatim (triton 3.9, sm_90): y = 2 * x over 128 lanes.
COPY_SASS = """
\tcode for sm_90a
\t.target\tsm_90a

\t\tFunction : _copy_scaled
\t.headerflags\t@"EF_CUDA_ACCELERATORS EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                  /* 0x00000a00ff017b82 */
                                                                           /* 0x000fe20000000800 */
        /*0010*/                   S2R R7, SR_TID.X ;                      /* 0x0000000000077919 */
                                                                           /* 0x000e2e0000002100 */
        /*0020*/                   LDC.64 R4, c[0x0][0x210] ;              /* 0x00008400ff047b82 */
                                                                           /* 0x000e620000000a00 */
        /*0030*/                   ULDC.64 UR4, c[0x0][0x208] ;            /* 0x0000820000047ab9 */
                                                                           /* 0x000fce0000000a00 */
        /*0040*/                   LDC.64 R2, c[0x0][0x218] ;              /* 0x00008600ff027b82 */
                                                                           /* 0x000ea20000000a00 */
        /*0050*/                   LOP3.LUT R7, R7, 0x7f, RZ, 0xc0, !PT ;  /* 0x0000007f07077812 */
                                                                           /* 0x001fca00078ec0ff */
        /*0060*/                   IMAD.WIDE.U32 R4, R7, 0x4, R4 ;         /* 0x0000000407047825 */
                                                                           /* 0x002fcc00078e0004 */
        /*0070*/                   LDG.E R4, desc[UR4][R4.64] ;            /* 0x0000000404047981 */
                                                                           /* 0x000ee2000c1e1900 */
        /*0080*/                   IMAD.WIDE.U32 R2, R7, 0x4, R2 ;         /* 0x0000000407027825 */
                                                                           /* 0x004fc800078e0002 */
        /*0090*/                   FADD R7, R4, R4 ;                       /* 0x0000000404077221 */
                                                                           /* 0x008fca0000000000 */
        /*00a0*/                   STG.E desc[UR4][R2.64], R7 ;            /* 0x0000000702007986 */
                                                                           /* 0x000fe2000c101904 */
        /*00b0*/                   EXIT ;                                  /* 0x000000000000794d */
                                                                           /* 0x000fea0003800000 */
        /*00c0*/                   BRA 0xc0;                               /* 0xfffffffc00fc7947 */
                                                                           /* 0x000fc0000383ffff */
        /*00d0*/                   NOP;                                    /* 0x0000000000007918 */
                                                                           /* 0x000fc00000000000 */
        /*00e0*/                   NOP;                                    /* 0x0000000000007918 */
                                                                           /* 0x000fc00000000000 */
"""

GUARDED_LOOP = """
    0000 S2R R0, SR_TID.X
    0010 ISETP.GE.AND P0, PT, R0, 0x1, PT
    0020 @!P0 BRA 0x80
    0030 MOV R1, RZ
    0040 MUFU.EX2 R2, R0
    0050 IADD3 R1, R1, 0x1, RZ
    0060 ISETP.LT.AND P1, PT, R1, R0, PT
    0070 @P1 BRA 0x40
    0080 STG.E desc[UR4][R2.64], R1
    0090 EXIT
    00a0 BRA 0xa0
    00b0 NOP
"""


def test_real_listing_straight_line_skips_padding():
    funcs = sass_cfg.parse_listing(COPY_SASS)
    assert list(funcs) == ["_copy_scaled"]
    instrs = funcs["_copy_scaled"]
    assert len(instrs) == 15 and instrs[7].op == "LDG.E" and instrs[12].target == "0xc0"
    cost = sass_cfg.analyse(instrs)
    # 0x00..0xb0 issue (12, EXIT included); the BRA-to-itself and the NOPs after EXIT do not
    assert cost.straight == SassPath(12, 12, 0, 0, 0) and cost.loops == [] and cost.problems == []


def test_guarded_loop():
    cost = cost_of(GUARDED_LOOP)
    (loop,) = cost.loops
    assert loop.header == 0x40 and loop.own == SassPath(4, 4, 1, 1, 0) and loop.parent is None
    assert loop.ops["MUFU.EX2"] == 1
    # longest: 0x00-0x30 (4) + 0x80-0x90 (2) around the loop; shortest skips the preheader MOV
    assert (cost.straight.max, cost.straight.min) == (6, 5)


def test_labels_resolve_like_addresses():
    labelled = """
        0000 S2R R0, SR_TID.X
        0010 ISETP.GE.AND P0, PT, R0, 0x1, PT
        0020 @!P0 BRA `(.L_x_1)
        0030 MOV R1, RZ
        .L_x_0:
        0040 MUFU.EX2 R2, R0
        0050 IADD3 R1, R1, 0x1, RZ
        0060 ISETP.LT.AND P1, PT, R1, R0, PT
        0070 @P1 BRA `(.L_x_0)
        .L_x_1:
        0080 STG.E desc[UR4][R2.64], R1
        0090 EXIT
        .L_x_2:
        00a0 BRA `(.L_x_2)
    """
    a, b = cost_of(labelled), cost_of(GUARDED_LOOP)
    assert a.straight == b.straight and [lp.own for lp in a.loops] == [lp.own for lp in b.loops]


NESTED = """
    0000 MOV R0, RZ
    0010 MOV R1, RZ
    0020 IADD3 R2, R2, 0x1, RZ
    0030 FADD R3, R3, R2
    0040 ISETP.LT.AND P0, PT, R1, 0x4, PT
    0050 @P0 BRA 0x30
    0060 IADD3 R0, R0, 0x1, RZ
    0070 ISETP.LT.AND P1, PT, R0, 0x8, PT
    0080 @P1 BRA 0x10
    0090 EXIT
"""


def test_nested_loops_count_their_own_blocks():
    cost = cost_of(NESTED)
    outer, inner = cost.loops
    assert (outer.header, inner.header) == (0x10, 0x30)
    assert inner.parent == 0 and outer.children == [1] and cost.top_loops() == [outer]
    assert outer.own.max == 5 and inner.own.max == 3 and cost.straight.max == 2
    # 8 outer iterations, 32 inner ones in all, one element per lane: 2 + 8*5 + 32*3 per lane
    est = static_check.walk(cost, [8, 32], 32, "nested")
    assert est.sass == 138 and est.exact and est.problems == []
    bad = static_check.walk(cost, [8], 32, "one loop")
    assert bad.problems and "expects 1 loop(s), the SASS has 2" in bad.problems[0]


def test_branch_in_loop_gives_max_and_min():
    cost = cost_of("""
        0000 MOV R0, RZ
        0010 ISETP.NE.AND P0, PT, R5, RZ, PT
        0020 @P0 BRA 0x60
        0030 FMUL R1, R1, R1
        0040 FMUL R1, R1, R1
        0050 BRA 0x70
        0060 MUFU.RCP R1, R1
        0070 IADD3 R0, R0, 0x1, RZ
        0080 ISETP.LT.AND P1, PT, R0, 0x10, PT
        0090 @P1 BRA 0x10
        00a0 EXIT
    """)
    (loop,) = cost.loops
    assert loop.own == SassPath(8, 6, 0, 1, 0) and not loop.own.exact
    est = static_check.walk(cost, [16], 32, "if/else")
    assert not est.exact and est.sass == 2 + 16 * 8 and est.sass_min == 2 + 16 * 6


def test_predicate_forms():
    cost = cost_of("""
        0000 MOV R0, RZ
        0010 @!PT BRA 0x40
        0020 BRA.U !UP0, 0x40
        0030 FADD R0, R0, R0
        0040 @PT BRA 0x60
        0050 FADD R0, R0, R0
        0060 EXIT
    """)
    # @!PT never branches (but issues); BRA.U !UP0 may (0x30 is optional); @PT always does (0x50 is dead)
    assert (cost.straight.max, cost.straight.min) == (6, 5) and cost.loops == []


def test_calls_are_slow_paths_unless_unavoidable():
    cost = cost_of("""
        0000 ISETP.GT.AND P0, PT, R0, 0x7f, PT
        0010 @P0 BRA 0x40
        0020 MUFU.RCP R1, R0
        0030 BRA 0x60
        0040 MOV R20, 0x60
        0050 CALL.REL.NOINC 0x90
        0060 STG.E desc[UR4][R2.64], R1
        0070 EXIT
        0080 BRA 0x80
        0090 FFMA R1, R0, R1, R1
        00a0 FFMA R1, R0, R1, R1
        00b0 FFMA R1, R0, R1, R1
        00c0 RET.REL.NODEC R20 0x0
    """)
    assert cost.straight == SassPath(6, 6, 1, 1, 0)
    forced = cost_of("""
        0000 MOV R20, 0x20
        0010 CALL.REL.NOINC 0x50
        0020 STG.E desc[UR4][R2.64], R1
        0030 EXIT
        0040 BRA 0x40
        0050 FFMA R1, R0, R1, R1
        0060 FFMA R1, R0, R1, R1
        0070 RET.REL.NODEC R20 0x0
    """)
    assert forced.straight == SassPath(7, 7, 0, 0, 1)  # 4 + the callee's 3 (RET included)


def test_cold_predicate_steers_off_the_tail():
    body = """
        0000 ISETP.NE.AND P0, PT, R9, RZ, PT
        0010 @P0 BRA 0x50
        0020 LDG.E.U16 R1, desc[UR4][R2.64]
        0030 LDG.E.U16 R4, desc[UR4][R2.64+0x2]
        0040 BRA 0x60
        0050 LDG.E.128 R4, desc[UR4][R2.64]
        0060 EXIT
    """
    assert cost_of(body).straight.max == 6
    cold = cost_of(body, cold=lambda ins: ins.op == "LDG.E.U16")
    assert cold.straight == SassPath(4, 4, 0, 0, 0)


# nvcc 13.0, sm_90: switch (mode) over 6 cases -> two BRX (indices 0..3 and 3..5) on one table
PICK = """
    0000 LDC R1, c[0x0][0x28]
    0010 S2R R7, SR_TID.X
    0020 LDC R6, c[0x0][0x220]
    0030 ULDC.64 UR4, c[0x0][0x208]
    0040 LDC.64 R2, c[0x0][0x210]
    0050 IMAD.MOV.U32 R5, RZ, RZ, RZ
    0060 ISETP.GT.AND P0, PT, R6, 0x2, PT
    0070 IMAD.WIDE R2, R7, 0x4, R2
    0080 SHF.R.S32.HI R4, RZ, 0x1f, R7
    0090 LDG.E R0, desc[UR4][R2.64]
    00a0 @P0 BRA 0x200
    00b0 VIMNMX.U32 R2, R6, 0x3, PT
    00c0 IMAD.SHL.U32 R6, R2, 0x4, RZ
    00d0 LDC R2, c[0x2][R6]
    00e0 SHF.R.S32.HI R3, RZ, 0x1f, R2
    00f0 BRX R2 -0x100
    0100 FMUL R3, R0.reuse, 16777216
    0110 FSETP.GEU.AND P0, PT, |R0|, 1.175494350822287508e-38, PT
    0120 FSEL R3, R3, R0, !P0
    0130 MUFU.LG2 R5, R3
    0140 @!P0 FADD R5, R5, -24
    0150 FMUL.D2 R5, R5, 0.69314718246459960938
    0160 BRA 0x330
    0170 HFMA2.MMA R5, -RZ, RZ, 2.125, 0
    0180 FFMA R5, R0, R5, 1
    0190 BRA 0x330
    01a0 FMUL R0, R0, 1.4426950216293334961
    01b0 FSETP.GEU.AND P0, PT, R0, -126, PT
    01c0 @!P0 FMUL R0, R0, 0.5
    01d0 MUFU.EX2 R5, R0
    01e0 @!P0 FMUL R5, R5, R5
    01f0 BRA 0x330
    0200 IMAD.MOV.U32 R3, RZ, RZ, -0x3
    0210 VIADDMNMX.U32 R2, R6, R3, 0x2, PT
    0220 SHF.L.U32 R8, R2, 0x2, RZ
    0230 LDC R2, c[0x2][R8+0x10]
    0240 SHF.R.S32.HI R3, RZ, 0x1f, R2
    0250 BRX R2 -0x260
    0260 ISETP.NE.AND P0, PT, R6, 0x5, PT
    0270 @P0 BRA 0x330
    0280 FADD R5, R0, -7
    0290 BRA 0x330
    02a0 FMUL R5, R0, R0
    02b0 FMUL R5, R0, R5
    02c0 BRA 0x330
    02d0 FSETP.GEU.AND P0, PT, |R0|, 1.175494350822287508e-38, PT
    02e0 HFMA2.MMA R5, -RZ, RZ, 15, 0
    02f0 FSEL R5, R5, 1, !P0
    0300 @!P0 FMUL R0, R0, 16777216
    0310 MUFU.RCP R0, R0
    0320 FMUL R5, R0, R5
    0330 ULDC.64 UR6, c[0x0][0x218]
    0340 LEA R2, P0, R7, UR6, 0x2
    0350 LEA.HI.X R3, R7, UR7, R4, 0x2, P0
    0360 STG.E desc[UR4][R2.64], R5
    0370 EXIT
    0380 BRA 0x380
"""
PICK_ELF = """
.nv.constant2.pick
0x00000170 0x000001a0 0x00000100 0x00000330
0x000002a0 0x000002d0 0x00000260

.section .rela.nv.constant2.pick\tRELA
"""
# Read off PICK: entry block 11 (to 0xa0); cases 0x100 (7, LG2), 0x170 (3), 0x1a0 (6, EX2), 0x330
# direct, or via 0x200 (6) to 0x260 (2, then 0x280: 2), 0x2a0 (3), 0x2d0 (6, RCP); exit 0x330 (5).
PICK_COST = SassPath(max=11 + 5 + 7 + 5, min=11 + 5 + 5, mufu=1, mufu_min=0, cold=0)


def test_jump_tables():
    tables = sass_cfg.constant_tables(PICK_ELF)
    assert tables == {"pick": [0x170, 0x1A0, 0x100, 0x330, 0x2A0, 0x2D0, 0x260]}
    cost = cost_of(PICK, table=tables["pick"])
    assert cost.straight == PICK_COST and cost.problems == []
    blind = cost_of(PICK)
    assert any("jump table not found" in p for p in blind.problems)


def test_split_raw_rebases_each_function():
    raw = listing("""
        0000 MOV R0, RZ
        0010 EXIT
        0020 BRA 0x20
        0030 NOP
        0040 MOV R1, RZ
        0050 @P0 BRA 0x40
        0060 EXIT
    """)
    first, second = sass_cfg.split_raw(raw, [0, 0x40])
    assert [i.addr for i in first] == [0, 0x10, 0x20, 0x30] and first[2].target == "0x20"
    assert [i.addr for i in second] == [0, 0x10, 0x20] and second[1].target == "0x0"
    assert [lp.own.max for lp in sass_cfg.analyse(second).loops] == [2]


def test_triton_model_and_budget():
    # C = 80 as 5 unrolled 16-wide tiles: the row-tile loop and the last program's sum only
    spec = dict(constexprs=dict(ONE_TILE=False, BLOCK_C=16, BLOCK_N=64, C_TILES=5, STATS=1, REDUCE_NONE=False,
                                REWEIGHT=1),
                options=dict(num_warps=4), problem=dict(C=80))
    trips, per_warp, _ = static_check.triton_model(spec)
    assert trips == [1, 1] and per_warp == 64 * 80 / 4
    assert not static_check._dead_tails(spec)
    # the targets' batch on an H100: 2^20 / 64 row tiles over 132 SMs x 4 blocks (113 registers, 120
    # allocated, x 32 lanes x 4 warps: 15,360 of 65,536) = 32 tiles a program; the last program's sum
    # stays one trip
    spec["problem"]["N"] = 1 << 20
    trips, per_warp, note = static_check.triton_model(spec, regs=113)
    assert trips == [32, 1] and per_warp == 32 * 64 * 80 / 4 and "32 row tile(s) a program" in note
    assert static_check.triton_model(spec)[0] == [1, 1]  # registers unknown: one tile, the costliest
    # the column loop of C = 8192: statistics over 2 x 1024 labels a trip, loss over 1024 columns
    spec = dict(constexprs=dict(ONE_TILE=False, BLOCK_C=1024, BLOCK_N=2, C_TILES=0, STATS=1, REDUCE_NONE=False,
                                REWEIGHT=1),
                options=dict(num_warps=4), problem=dict(C=8192))
    assert static_check.triton_model(spec)[:2] == ([1, 4, 8, 1], 2 * 8192 / 4)
    assert static_check._dead_tails(spec)
    spec["problem"]["N"] = 8192  # 4,096 row tiles over 132 x 8 programs (64 registers, 4 warps): 4 each
    assert static_check.triton_model(spec, regs=64)[:2] == ([4, 16, 32, 1], 4 * 2 * 8192 / 4)
    del spec["problem"]["N"]
    spec["constexprs"].update(REWEIGHT=3)  # CB average_w: two accumulators, statistics tiles 1024 wide
    assert static_check.triton_model(spec)[0] == [1, 8, 8, 1]
    spec["constexprs"].update(STATS=0)
    assert static_check.triton_model(spec)[:2] == ([1, 8, 1], 2 * 8192 / 4)
    spec["problem"]["C"] = 8200  # a 8-column tail runs: its masked loads count
    assert not static_check._dead_tails(spec)
    assert static_check._tail_loads(sass_cfg.Instr(0, "LDG.E.128", "R0, desc[UR4][R2.64]", "@P0"))
    assert not static_check._tail_loads(sass_cfg.Instr(0, "LDG.E.128", "R0, desc[UR4][R2.64]"))
    for target, over in (("sm_90", 2), ("sm_80", 0)):
        row = static_check.Row("k", "s", target, main_path=True, loss="db-focal")
        static_check.budget(row, static_check.Estimate(36.5, 30.0, 5.5, False, ["n"]), 36)
        assert len(row.over_budget) == over and row.path == "max" and row.sass_per_element == 36.5
    # the asymmetric forms are counted and reported, not failed
    row = static_check.Row("k", "s", "sm_90", ok=True, main_path=True, loss="asl")
    static_check.budget(row, static_check.Estimate(50.0, 50.0, 6.0), 36)
    assert row.over_budget == [] and len(row.notes) == 2 and "reported" in static_check.status(row)
    assert static_check.failing([row]) == ([], [])
    row = static_check.Row("k", "s", "sm_90", main_path=True, loss="bce")
    static_check.budget(row, static_check.Estimate(36.0, 36.0, 5.0), 36)
    assert row.over_budget == [] and row.path == "exact"


def test_cuda_geometry_follows_the_plan():
    # dbl_plan.h rows_geometry: C = 80 -> 10 vectors a row; N = 4096 wants 1 round -> 25 rows per
    # item (not cut to 16 for whole warps: that would lose over an eighth of them), G = 8 threads
    # per row (pow2_floor(256 / 25))
    assert static_check.cuda_geometry(4096, 80) == dict(vpr=10, rounds=1, rows=25, chunks=1, items=164, blocks=164,
                                                        G=8)
    # C = 8192: 1024 vectors, 8 rounds -> 2 rows per item, 128 threads per row
    g = static_check.cuda_geometry(4096, 8192)
    assert (g["rounds"], g["rows"], g["G"], g["items"]) == (8, 2, 128, 2048)
    assert static_check.cuda_geometry(1 << 20, 80)["rounds"] == 8  # enough rows: full chunks
    assert static_check.cuda_geometry(10, 20000)["chunks"] == 2  # a row wider than a chunk


def _loop(header, own, parent=None, mufu=0, ops=()):
    return sass_cfg.Loop(header, frozenset(), parent=parent, own=SassPath(own, own, mufu, mufu),
                         ops=collections.Counter(dict(ops)))


def test_cuda_model_tells_loops_apart():
    names = [name for name, _, _ in static_check.CUDA_MAIN]
    assert len(names) == len(set(names)) == 36  # 3 losses x 3 logits dtypes x 2 C x gradient or not
    label = "LDG.E.64.CONSTANT"
    loops = [_loop(0, 100),                                                     # 0 item loop
             _loop(1, 10, 0), _loop(2, 40, 1, ops={label: 1}),                  # chunked statistics
             _loop(3, 40, 0, ops={label: 1}),                                   # statistics rounds
             _loop(4, 8, 0, ops={"LDS": 1}),                                    # tree lanes
             _loop(5, 12, 0, ops={"BAR.SYNC": 1}),                              # tree halves
             _loop(6, 80, 0, ops={"LDG.E": 2, "STS.128": 1}),                   # row constants
             _loop(7, 20, 0), _loop(8, 300, 7, mufu=40, ops={"LDG.E": 8}),      # elements, weight tensor
             _loop(9, 20, 0), _loop(10, 250, 9, mufu=40),                       # elements
             _loop(11, 13, ops={"LDG.E.64.STRONG.GPU": 1}), _loop(12, 41, ops={"LDG.E.64.STRONG.GPU": 16})]
    for i, lp in enumerate(loops):
        if lp.parent is not None:
            loops[lp.parent].children.append(i)
    cost = sass_cfg.Cost(SassPath(200, 150), loops)
    roles = kernel_models._cuda_roles(cost, 0)
    assert roles == {1: "stats_chunks", 2: "stats_chunk_rounds", 3: "stats_rounds", 4: "tree_lanes",
                     5: "tree_halves", 6: "rows", 7: "element_chunks_w", 8: "element_w", 9: "element_chunks",
                     10: "element"}
    # C = 80, statistics: 1 item of 25 rows, 250 slots: every warp runs the one round (the last
    # with 26 of its 32 lanes), ceil(10 / 8) = 2 tree-lane trips, 3 halvings, the first warp the
    # row constants, 1 sum trip
    est = static_check.cuda_model(True)(cost, 80, 4096)
    want = 200 + 100 + 40 + 2 * 8 + 3 * 12 + 80 / 8 + 20 + 250 + 13
    assert est.sass == pytest.approx(32 * want / (25 * 80 / 8))
    assert est.mufu == pytest.approx(32 * 40 / 250)
    # no statistics, 8 rounds; 8,192 rows: 4,096 items on the 396 resident blocks of 132 SMs -> 11
    # items a block; the 2 rows' constants in the first warp; 2 partials per thread to add
    est = static_check.cuda_model(False)(cost, 8192)
    assert est.sass == pytest.approx(32 * (200 + 11 * (100 + 80 / 8 + 20 + 8 * 250) + 2 * 13) / (11 * 2 * 8192 / 8))


def test_cuda_model_one_thread_per_row():
    # 1,048,576 x 80 (the target): 8 rounds -> 204 rows, cut to 192 (1,920 slots: the last round's
    # idle half is 4 whole warps, so a warp runs 7.5 rounds on average), G = 1 (a thread sums its
    # row's 10 partials); 5,462 items on 396 blocks -> 14 items a block
    g = static_check.cuda_geometry(1 << 20, 80)
    assert (g["rounds"], g["rows"], g["G"], g["items"], g["blocks"]) == (8, 192, 1, 5462, 396)
    loops = [_loop(0, 100),                                                     # 0 item loop
             _loop(1, 40, 0, ops={"LDG.E.64.CONSTANT": 1}),                     # statistics rounds
             _loop(2, 9, 0), _loop(3, 6, 2),                                    # rows, their partials
             _loop(4, 20, 0), _loop(5, 250, 4, mufu=40),                        # elements
             _loop(6, 13, ops={"LDG.E.64.STRONG.GPU": 1})]
    for i, lp in enumerate(loops):
        if lp.parent is not None:
            loops[lp.parent].children.append(i)
    cost = sass_cfg.Cost(SassPath(200, 150), loops)
    assert kernel_models._cuda_roles(cost, 0) == {1: "stats_rounds", 2: "tree_g1_rows", 3: "tree_g1_lanes",
                                                  4: "element_chunks", 5: "element"}
    est = static_check.cuda_model(True)(cost, 80)
    trips = 14 * (100 + 7.5 * 40 + 9 + 10 * 6 + 20 + 7.5 * 250) + 2 * 13
    assert est.sass == pytest.approx(32 * (200 + trips) / (14 * 192 * 80 / 8))


# ---------------------------------------------------------------------------------------------
# Kernels compiled here: counts read off the SASS of the versions named (other compilers
# schedule differently, so the exact figures are checked only there).
# ---------------------------------------------------------------------------------------------
def _tool():
    tool = static_check.cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump")
    return tool


# Compiled in a child process: the suite runs with TRITON_INTERPRET=1, under which @triton.jit
# makes interpreter functions that cannot be compiled.
TINY_TRITON = r"""
import json, sys
from pathlib import Path
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import sass_cfg, static_check


@triton.jit
def _copy_scaled(x_ptr, y_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, tl.load(x_ptr + offs) * 2.0)


@triton.jit
def _row_sum(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(0, n, BLOCK):
        acc += tl.exp2(tl.load(x_ptr + i + tl.arange(0, BLOCK)))
    tl.store(y_ptr, tl.sum(acc, axis=0))


def summary(cost):
    return [list(cost.straight.__dict__.values()), [[lp.header, list(lp.own.__dict__.values())] for lp in cost.loops]]


work, tool = Path(sys.argv[1]), static_check.cuobjdump()
out, texts = {"version": triton.__version__}, []
for fn, sig in ((_copy_scaled, {"x_ptr": "*fp32", "y_ptr": "*fp32", "BLOCK": "constexpr"}),
                (_row_sum, {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"})):
    src = ASTSource(fn=fn, signature=sig, constexprs={"BLOCK": 128},
                    attrs={(0,): [["tt.divisibility", 16]], (1,): [["tt.divisibility", 16]]})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4))
    cubin = work / (fn.__name__ + ".cubin")
    cubin.write_bytes(compiled.asm["cubin"])
    info = static_check.read_cubin(cubin, tool)[fn.__name__]
    out[fn.__name__] = summary(sass_cfg.analyse(sass_cfg.parse_function(info["sass"])))
    texts.append(sass_cfg.elf_texts(compiled.asm["cubin"])[fn.__name__])
out["batched"] = [summary(sass_cfg.analyse(i)) for i in static_check.disassemble(texts, 90, tool, work)]
print(json.dumps(out))
"""


def test_compiled_triton_kernels(tmp_path):
    pytest.importorskip("triton")
    _tool()
    script = tmp_path / "tiny_triton.py"
    script.write_text(TINY_TRITON)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]), TRITON_DEFAULT_FP_FUSION="1")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    # one nvdisasm call over both kernels' machine code reads as cuobjdump reads each cubin
    assert got["batched"] == [got["_copy_scaled"], got["_row_sum"]]
    if got["version"] != "3.9.0":
        pytest.skip(f"counts read off triton 3.9.0's SASS, this is {got['version']}")
    assert got["_copy_scaled"] == [[12, 12, 0, 0, 0], []]
    # LLVM unrolls the loop by 4 (0x120-0x2b0: 26 instructions, 4 ex2) and peels the remainder into
    # straight code; longest path 0x00-0x110 (18), 0x2c0-0x5b0 (48 with 3 ex2), 0x5c0-0x5f0 (4);
    # shortest: 0x00-0x60, 0x430-0x5b0, 0x5c0-0x5f0 (7 + 25 + 4)
    assert got["_row_sum"] == [[70, 36, 3, 0, 0], [[0x120, [26, 26, 4, 4, 0]]]]


TINY_CU = r"""
extern "C" __global__ void scale_loop(const float* x, float* y, int n) {
#pragma unroll 1
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) y[i] = __expf(x[i]) * 2.0f;
}

extern "C" __global__ void pick(const float* x, float* y, int mode) {
  const int i = threadIdx.x;
  float v = x[i];
  switch (mode) {
    case 0: v = v * 3.0f + 1.0f; break;
    case 1: v = __expf(v); break;
    case 2: v = __logf(v) * 0.5f; break;
    case 3: v = v * v * v; break;
    case 4: v = __fdividef(1.0f, v); break;
    case 5: v = v - 7.0f; break;
    default: v = 0.0f;
  }
  y[i] = v;
}
"""


def test_compiled_cuda_kernels(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("no nvcc")
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    if not re.search(r"release 13\.0\b", version):
        pytest.skip("counts read off nvcc 13.0's SASS")
    source = tmp_path / "tiny.cu"
    source.write_text(TINY_CU)
    cubin = tmp_path / "tiny.cubin"
    subprocess.run([nvcc, "-cubin", "-arch=sm_90", "-O3", str(source), "-o", str(cubin)], check=True)
    funcs = static_check.read_cubin(cubin, _tool(), elf=True)
    loop = sass_cfg.analyse(sass_cfg.parse_function(funcs["scale_loop"]["sass"]))
    # 0x00-0x70 ends in a guarded EXIT, 0x80-0xc0 enters the loop 0xd0-0x190 (ex2), EXIT at 0x1a0
    assert loop.straight == SassPath(14, 14) and [(lp.header, lp.own) for lp in loop.loops] == [
        (0xD0, SassPath(13, 13, 1, 1))]
    pick = sass_cfg.analyse(sass_cfg.parse_function(funcs["pick"]["sass"]), funcs["pick"]["table"])
    assert pick.straight == PICK_COST and pick.problems == []


def test_spills_fail_on_sm90_and_are_noted_on_sm80():
    """The budget's target (sm_90) must not spill; an sm_80 spill is reported in the status."""
    info = dict(regs=128, local=0, shared=0, stack=8, loads=[128], stores=[128])
    rows = {}
    for target in ("sm_80", "sm_90"):
        rows[target] = static_check.Row("_fused_kernel", "x", target, main_path=True)
        static_check._fill(rows[target], info, 12, True)
    assert rows["sm_80"].problems == [] and rows["sm_80"].notes == ["spills: 12 B spill stores, local 0 B"]
    assert static_check.status(rows["sm_80"]).startswith("ok; spills: 12 B")
    assert rows["sm_90"].problems == ["spills: 12 B spill stores, local 0 B"]
    assert static_check.failing([rows["sm_80"]])[0] == []
    assert static_check.failing([rows["sm_90"]])[0] == [rows["sm_90"]]
