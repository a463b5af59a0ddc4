"""Instruction-count models behind ``static_check.py``'s figures per logits element: how often each
loop of a main-path kernel runs and how many elements a warp covers, combined with the per-loop
costs that ``sass_cfg.analyse`` reads off the SASS (see static_check's docstring for the rules).

* ``triton_model``: ``_fused_kernel`` of ``dbl_kernels/triton_kernel/kernels.py``.
* ``cuda_model`` / ``CUDA_MAIN``: the vector-path ``fused_kernel`` of ``csrc/dbl_block.h`` under the
  plan of ``csrc/dbl_plan.h``. Edit with those files.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

@dataclass
class Estimate:
    sass: float = 0.0
    sass_min: float = 0.0
    mufu: float = 0.0
    exact: bool = True
    notes: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    def __add__(self, other):
        return Estimate(self.sass + other.sass, self.sass_min + other.sass_min, self.mufu + other.mufu,
                        self.exact and other.exact, self.notes + other.notes, self.problems + other.problems)


def walk(cost, trips, per_warp, note):
    """Per-element figures of one kernel: ``trips`` are the iterations per warp of each loop of
    ``cost.loops`` (address order, inner loops in full: not per outer iteration), ``per_warp`` the
    logits elements one warp's program covers."""
    if len(trips) != len(cost.loops):
        shape = ", ".join(f"{lp.header:#x}" + (f" in {cost.loops[lp.parent].header:#x}" if lp.parent is not None
                                                 else "") for lp in cost.loops) or "none"
        return Estimate(problems=[f"loop model expects {len(trips)} loop(s), the SASS has {len(cost.loops)} "
                                  f"({shape}): update the model"])
    hi = cost.straight.max + sum(t * lp.own.max for t, lp in zip(trips, cost.loops))
    lo = cost.straight.min + sum(t * lp.own.min for t, lp in zip(trips, cost.loops))
    mufu = cost.straight.mufu + sum(t * lp.own.mufu for t, lp in zip(trips, cost.loops))
    exact = all(lp.own.exact for t, lp in zip(trips, cost.loops) if t)
    cold = cost.straight.cold + sum(lp.own.cold for t, lp in zip(trips, cost.loops) if t)
    notes = [note] + ([f"{cold} cold block(s) on the path"] if cold else [])
    return Estimate(32 * hi / per_warp, 32 * lo / per_warp, 32 * mufu / per_warp, exact, notes, list(cost.problems))


def _cdiv(a, b):
    return -(-a // b)


SMS = 132  # H100 and H200: the sm_90 machines the budget is set for


def triton_model(spec, regs=None, sms=SMS):
    """(trips, elements per warp, note) of ``_fused_kernel`` for its main-path problem (``N`` x ``C``,
    no column split). The persistent grid (launcher.programs_cap) has ``sms`` x blocks_per_sm(regs,
    warps) programs, each taking ceil(row tiles / programs) row tiles, over which its straight-line
    code spreads (measured on an H100: 34.9 SASS instructions per element where one tile per
    program counted 36.7). Without ``regs`` or ``N``: one row tile per program, the costliest case.
    Loops in address order: the persistent row-tile loop; inside it, unless the row is one tile
    (``ONE_TILE``) or unrolled (``C_TILES``), the statistics loop (``STATS`` inline: tiles of
    ``stats_width() * BLOCK_C`` labels) and the loss loop (two tiles an iteration where EVEN_C is 2);
    then the last program's sum over the
    partials (one trip, charged to every warp)."""
    from dbl_kernels.triton_kernel.kernels import STATS_INLINE, stats_width
    from dbl_kernels.triton_kernel.tuning import blocks_per_sm

    ce, n_cols, warps = spec["constexprs"], spec["problem"]["C"], spec["options"]["num_warps"]
    rows, block_c = ce["BLOCK_N"], ce["BLOCK_C"]
    n_rows, tiles = spec["problem"].get("N"), 1
    if regs and n_rows:
        tiles = _cdiv(_cdiv(n_rows, rows), sms * blocks_per_sm(regs, warps))
    per_warp = tiles * rows * n_cols / warps
    loops, trips = ["row tiles"], [tiles]
    if not ce["ONE_TILE"] and not ce["C_TILES"]:
        if ce["STATS"] == STATS_INLINE:
            loops.append("statistics")
            trips.append(tiles * (n_cols // (stats_width(ce["REWEIGHT"]) * block_c)))
        loops.append("loss")
        trips.append(tiles * (n_cols // (block_c * (2 if ce.get("EVEN_C") == 2 else 1))))
    if not ce["REDUCE_NONE"]:
        loops.append("partial sum")
        trips.append(1)
    shape = "one tile" if ce["ONE_TILE"] else f"{ce['C_TILES']} unrolled tiles" if ce["C_TILES"] else \
        f"{n_cols // block_c} tiles"
    where = f"N={n_rows}: {tiles} row tile(s) a program; " if tiles > 1 else ""
    return trips, per_warp, (f"{where}{rows} row(s) x {block_c} columns, {shape}; loops: "
                             + ", ".join(f"{n} x {t}" for n, t in zip(loops, trips)))


def _tail_loads(ins):
    """A masked (guarded) global load: the column tail of a row tile, where full tiles load unmasked."""
    return ins.base == "LDG" and not ins.always


def _dead_tails(spec):
    """Whether the masked column tails of the statistics and loss loops never run on the main-path
    problem (C a multiple of both tile widths): their blocks are then off the counted path."""
    from dbl_kernels.triton_kernel.kernels import STATS_INLINE, stats_width

    ce, n_cols = spec["constexprs"], spec["problem"]["C"]
    if ce["ONE_TILE"] or ce["C_TILES"]:
        return False  # no tail: the one tile is masked, unrolled tiles are exact
    stats_c = stats_width(ce["REWEIGHT"]) * ce["BLOCK_C"]
    return n_cols % ce["BLOCK_C"] == 0 and (ce["STATS"] != STATS_INLINE or n_cols % stats_c == 0)


# csrc/dbl_plan.h: kThreads, kRounds, kVec, kMaxRows, kTargetItems, blocks_per_sm (fp32 compute)
_THREADS, _ROUNDS, _VEC, _MAX_ROWS, _TARGET_ITEMS, _CUDA_BLOCKS_PER_SM = 256, 8, 8, 256, 512, 3


def cuda_main_n(n_cols):
    """The batch of the CUDA figures at ``n_cols``: the bandwidth targets' N (aot.MAIN_N, shared
    with the Triton model: 1,048,576 x 80, 8,192 x 8,192)."""
    from dbl_kernels.triton_kernel.aot import MAIN_N

    return MAIN_N[n_cols]


def cuda_geometry(n_rows, n_cols, sms=SMS):
    """rows_geometry of csrc/dbl_plan.h for the vector paths (fp32 compute) on a device of ``sms``
    SMs (the grid: the blocks resident at once, dbl_cuda.cu): dict of rounds, rows, chunks, items,
    blocks, G (threads per row in the statistics tree)."""
    vpr, slots, max_blocks = _cdiv(n_cols, _VEC), _THREADS * _ROUNDS, sms * _CUDA_BLOCKS_PER_SM
    if vpr > slots:  # one row per item in full chunks
        items = n_rows
        return dict(vpr=vpr, rounds=_ROUNDS, rows=1, chunks=_cdiv(vpr, slots), items=items,
                    blocks=min(items, max_blocks), G=_THREADS)
    rounds = min(max(_cdiv(n_rows * vpr, _TARGET_ITEMS * _THREADS), 1), _ROUNDS)
    if rounds * _THREADS < vpr:
        rounds = _cdiv(vpr, _THREADS)
    rows = min(rounds * _THREADS // vpr, _MAX_ROWS)
    align = 32 // math.gcd(vpr, 32)  # rows * vpr a multiple of the warp size, if that costs <= 1/8 of them
    if rows >= align and (rows % align) * 8 <= rows:
        rows -= rows % align
    group = 1
    if rows < _THREADS:
        while group * 2 <= _THREADS // rows and group < _THREADS:
            group *= 2
        while group > 1 and group // 2 >= vpr:
            group //= 2
    items = _cdiv(n_rows, rows)
    return dict(vpr=vpr, rounds=_cdiv(rows * vpr, _THREADS), rows=rows, chunks=1, items=items,
                blocks=min(items, max_blocks), G=group)


def _cuda_roles(cost, item):
    """{loop index: role} of the loops inside item loop ``item`` of fused_kernel (dbl_block.h's
    run_kind), told apart by what they hold: element rounds loops issue MUFU (``element`` without
    the weight tensor, ``element_w`` with its scalar loads), statistics loops load labels
    (``LDG.E.64.CONSTANT``), the row tree reads shared memory (``tree_lanes``) and syncs
    (``tree_halves``), the row constants' loop (``rows``: thread r for row r) stores each row's
    16-byte RowConst to shared memory (``STS.128``)."""
    loops, roles = cost.loops, {}
    for i in loops[item].children:
        lp, kids = loops[i], loops[i].children
        if kids:
            (k,) = kids
            inner = loops[k]
            if inner.own.mufu:
                w = "_w" if inner.ops.get("LDG.E") else ""
                roles[i], roles[k] = f"element_chunks{w}", f"element{w}"
            elif any(op.startswith("LDG") for op in inner.ops):
                roles[i], roles[k] = "stats_chunks", "stats_chunk_rounds"
            else:
                roles[i], roles[k] = "tree_g1_rows", "tree_g1_lanes"
        elif lp.ops.get("STS.128"):
            roles[i] = "rows"
        elif any(op.startswith("BAR") for op in lp.ops):
            roles[i] = "tree_halves"
        elif any(op.startswith("LDG") for op in lp.ops):
            roles[i] = "stats_rounds"
        else:
            roles[i] = "tree_lanes"
    return roles


def cuda_model(stats):
    """The model of a vector-path fused_kernel (dbl_block.h) for C columns and cuda_main_n(C) rows
    on an H100/H200 (SMS): ``stats``: the path computes row statistics in the block (DB-focal,
    CB-focal). Trip counts per warp from cuda_geometry: the item loop (items per block: the grid is
    the resident blocks), inside it the statistics rounds, the row tree (ceil(vpr / G) partials per
    lane, log2 G halving steps; G = 1: one thread per row adds the row's vpr partials), the element
    rounds; the last block's loop over the block partials (16 per trip unrolled, then one per
    trip). Where the kernel holds two item loops (CB: a row max or a row sum, picked at run time),
    the costlier."""
    def model(cost, n_cols, n_rows=None):
        n_rows = n_rows or cuda_main_n(n_cols)
        g = cuda_geometry(n_rows, n_cols)
        if g["chunks"] > 1:
            return Estimate(problems=[f"C={n_cols}: chunked rows are not modelled: extend cuda_model"])
        per_item = _cdiv(g["items"], g["blocks"])
        partials = _cdiv(g["blocks"], _THREADS)
        g1 = stats and g["G"] == 1  # one thread per row sums the row's partials
        # the slot loops: a warp runs a round while any of its threads has a slot left
        rounds = _cdiv(g["rows"] * g["vpr"], 32) / (_THREADS // 32)
        want = dict(element=rounds, element_chunks=1,
                    tree_lanes=_cdiv(g["vpr"], g["G"]) if stats and not g1 else 0,
                    tree_halves=g["G"].bit_length() - 1 if stats else 0, stats_rounds=rounds if stats else 0,
                    tree_g1_rows=1 if g1 else 0, tree_g1_lanes=g["vpr"] if g1 else 0,
                    rows=_cdiv(g["rows"], 32) / (_THREADS // 32))  # one trip in each warp holding rows
        items = [i for i, lp in enumerate(cost.loops) if lp.parent is None and lp.children]
        best = None
        for item in items:
            roles = _cuda_roles(cost, item)
            if "element" not in roles.values():
                continue
            trips = []
            for i, lp in enumerate(cost.loops):
                if i == item:
                    trips.append(per_item)
                elif i in roles:
                    trips.append(per_item * want.get(roles[i], 0))
                elif lp.parent is None and not lp.children and lp.ops.get("LDG.E.64.STRONG.GPU"):
                    unrolled = lp.ops["LDG.E.64.STRONG.GPU"] > 1  # the last block's sum of the partials
                    trips.append(partials // 16 if unrolled else partials % 16)
                else:
                    trips.append(0)
            est = walk(cost, trips, per_item * g["rows"] * n_cols / (_THREADS // 32),
                       f"N={n_rows}: {g['rows']} rows x {g['rounds']} round(s) per item, G={g['G']}, "
                       f"{per_item} item(s) per block")
            if best is None or est.sass > best.sass:
                best = est
        return best or Estimate(problems=["no item loop with an element loop: update cuda_model"])
    return model


# The CUDA main paths: (name, C, parts), one part per kernel the path launches: (regex on the
# demangled kernel name, model) or (regex, model, cold regex): a model maps (sass_cfg.Cost, C) to an
# Estimate; blocks holding an opcode that the cold regex matches are off the main path where the
# listing has another. Each path is one fixed specialisation fused_kernel<Z, 8, PathOpts<...>,
# float> (uint8 and bool labels share it; the gradient is a template flag), launched once (no
# statistics pass: no by_batch). Edit this table with csrc/dbl_block.h (DbFocal, CbFocal, Bce).
_CUDA_Z = {"bf16": "bf16_t", "fp16": "f16_t", "fp32": "float"}
_CUDA_PATHS = {"db-focal": "1, 1, 0, true, {g}, 100", "cb-focal": "0, 1, 0, false, {g}, -1",
               "bce": "0, 0, 0, false, {g}, 0"}
CUDA_MAIN = [
    (f"{loss} {z} C={n_cols} grad{int(grad)}", n_cols,
     ((rf"fused_kernel<(dbl::cuda::)?{sym}, 8, dbl::cuda::PathOpts<{opts.format(g=str(grad).lower())}>, float>\(",
       cuda_model(loss != "bce")),))
    for loss, opts in _CUDA_PATHS.items() for z, sym in _CUDA_Z.items() for n_cols in (80, 8192)
    for grad in (True, False)
]
