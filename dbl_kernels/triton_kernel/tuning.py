"""Tile choices of the Triton kernels: the autotune sets on a GPU, fixed tiles in the interpreter,
and the test hook that forces other tiles. Read ``tiles`` through this module (``tuning.tiles``):
``force_tiles`` rebinds it.

Every program of ``_fused_kernel`` loops over row tiles of BLOCK_N rows (a persistent grid of a few
programs per SM) and, within a row tile, over columns in BLOCK_C-wide tiles. BLOCK_C is a power of
two that divides C up to a 16-column tail where it can (C = 80: 16, no padding); narrow rows take
many rows per tile, wide ones (C above ONE_TILE_MAX_C) 2-4 rows of long column tiles.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Optional

import torch
import triton

from .._spec import REWEIGHT_CB_AVG_N, REWEIGHT_CB_AVG_W
from ._math import INTERPRET
from .kernels import _fused_kernel

CHUNK_ALIGN = 4096  # column-split chunks are multiples of every BLOCK_C, so tiles stay 16-aligned
ONE_TILE_MAX_C = 4096  # above: the wide regime (2-4 rows per tile, column tiles up to 4096 wide)
# Elements per thread per tile: 8 (one 128-bit bf16 load) or 16; more would cut occupancy or spill.
_ROW_TILES = ((1024, 4), (2048, 4), (2048, 8), (4096, 8))  # (TILE_ELEMS, num_warps) of narrow rows
# (BLOCK_N, BLOCK_C, num_warps) of wide rows, 16 elements per thread in at most 2 rows (more rows take
# a row pointer each and cost instructions): 4 warps, or 16 (the H100's autotuner chose 16-warp tiles
# on wide rows: more loads in flight). 8 warps of 16 elements spill: ptxas caps them at 128
# registers (two blocks per SM). Tiles of 8 elements a thread (4 x 1024 and 4 x 2048 on 16 warps)
# spent 37-38.7 SASS instructions per element on DB-focal at C = 8,192 (over static_check's budget
# of 36): per-row-tile work over half the elements.
_WIDE_TILES = ((2, 1024, 4), (8, 1024, 16))
MAX_PADDING = 0.1  # column tiles may pad C by at most this share (C = 80: 16-wide tiles only)
SCALE_BLOCK = 4096
STATS_TILE = 1024
STATS_WARPS = 4
_KEY = ["C", "REWEIGHT", "NORM", "LOGIT_REG", "POW", "REDUCE_NONE", "HAS_GRADIENTS", "HAS_WEIGHT", "HARD_LABELS",
        "HAS_UNKNOWN", "STATS", "ASYM", "CSR", "EVEN_C"]


def per_thread(dtype):
    """Elements per thread the tiles may give without spilling (fp64 math takes ~4x the registers:
    4 spilled up to 44 B with a weight tensor)."""
    return 2 if dtype == torch.float64 else 16


def max_warps(dtype):
    """fp64 needs more than the 128 registers per thread a 16-warp block leaves (and spilled 16 B
    at 8 warps on sm_90)."""
    return 4 if dtype == torch.float64 else 16


def _most_warps(dtype, light):
    return max_warps(dtype) if light > 4 else min(8, max_warps(dtype))


def vec(dtype):
    """Logits per 128-bit load: the columns a thread holds side by side (the kernels' VEC)."""
    return 16 // dtype.itemsize


def one_tile_max_c(dtype):
    """The widest rows of the narrow-row regime (many rows per tile)."""
    return min(tiles.one_tile_max_c, max_warps(dtype) * 32 * per_thread(dtype))


def _padding(n_cols, block_c):
    return (-(-n_cols // block_c) * block_c - n_cols) / n_cols


def blocks_per_sm(n_regs, num_warps, regs_per_sm=65536, threads_per_sm=2048):
    """Programs of ``num_warps`` warps and ``n_regs`` registers a thread that fit on one SM at once
    (registers are allocated per warp, 256 at a time; at most 32 blocks an SM)."""
    per_warp = -(-max(n_regs, 1) * 32 // 256) * 256
    return max(1, min(regs_per_sm // (per_warp * num_warps), threads_per_sm // (32 * num_warps), 32))


def next_pow2(n):
    """The smallest power of two >= n (>= 1), on the host: triton.next_power_of_2 is a constexpr
    function in recent Tritons, about 10 us a call from Python, several per launch."""
    return 1 << max(0, n - 1).bit_length()


def column_tiles(n_cols, widest):
    """BLOCK_C candidates: powers of two from 16 to ``widest`` that pad C by at most MAX_PADDING
    (the least padding if none does)."""
    cands = [1 << k for k in range(4, max(4, (widest - 1).bit_length()) + 1)]
    if n_cols < 16:
        return [next_pow2(n_cols)]
    cands = [b for b in cands if b <= max(16, next_pow2(n_cols))]
    fits = [b for b in cands if _padding(n_cols, b) <= MAX_PADDING]
    return fits or [min(cands, key=lambda b: (_padding(n_cols, b), -b))]


def light(labels_dtype, has_weight, reweight, asym=0):
    """The most elements per thread an element's state allows without spilling: 16 for bool / uint8
    labels (tested as bytes) and a re-weighting that keeps one statistics accumulator (CB
    average_w / average_n keep two: sum and count), 8 for other labels, 4 with a weight tensor
    (8 spilled 16 B on sm_90) or the asymmetric form (16 spilled 104 B on sm_90); at 4, tiles take at
    most 8 warps (16 leave 64 registers a thread)."""
    if has_weight or asym:
        return 4
    return 16 if labels_dtype in (torch.bool, torch.uint8) and reweight not in (REWEIGHT_CB_AVG_W,
                                                                               REWEIGHT_CB_AVG_N) else 8


def row_configs(n_cols, dtype, unroll=True, light=16):
    """[(constexprs, num_warps)] of the narrow-row regime (C <= ONE_TILE_MAX_C) for logits of
    ``dtype``. Column tiles at most one warp wide (32 * VEC columns), so the row statistics reduce
    within warps. ``unroll``: unroll the column tiles where C is a few of them (C_TILES); without
    gradient stores to pace them, unrolled loads all hoist to the top and take every register, so
    the loss-only kernels loop. ``light``: the cap of light()."""
    pt, most = min(per_thread(dtype), light), _most_warps(dtype, light)
    cap = most * 32 * pt  # elements a tile may hold (fp64: 256, smaller than every _ROW_TILES entry)
    configs = {}
    for b in column_tiles(n_cols, 32 * vec(dtype))[-1:]:  # the widest: fewest passes over a row
        for t, w in _ROW_TILES:
            t = max(min(t, cap), b)
            w = min(most, max(w, t // (32 * pt)))
            if t <= cap:
                configs[(t // b, b, w)] = None
    return [(dict(BLOCK_N=n, BLOCK_C=b, ONE_TILE=b >= n_cols, C_TILES=c_tiles(n_cols, b) if unroll else 0), w)
            for n, b, w in configs]


MAX_UNROLL = 8
MAX_UNROLL_C = 256


def c_tiles(n_cols, block_c):
    """C_TILES of _fused_kernel: the number of column tiles when C (at most MAX_UNROLL_C) is a few
    BLOCK_C (the column loop is then unrolled, with constant offsets), else 0."""
    k, rem = divmod(n_cols, block_c)
    return k if rem == 0 and 1 < k <= MAX_UNROLL and n_cols <= MAX_UNROLL_C else 0


def loop_configs(dtype, light=16):
    """[(constexprs, num_warps)] of the wide regime for logits of ``dtype`` (``light``: the cap of light())."""
    # heavy elements on wide rows: 4 warps (8 spilled 16 B on sm_90 with a weight tensor)
    pt, most = min(per_thread(dtype), light), min(4, max_warps(dtype)) if light <= 4 else max_warps(dtype)
    configs = {}
    for n, b, w in _WIDE_TILES:
        w = max(w, n * b // (32 * pt))
        rows_per_thread = n // max(1, 32 * w * vec(dtype) // b)
        if w <= most and rows_per_thread <= 2:
            configs[(n, b, w)] = None
    if not configs:  # fp64 and heavy elements: one row, pt elements per thread
        configs[(1, 32 * most * pt, most)] = None
    return [(dict(BLOCK_N=n, BLOCK_C=b, ONE_TILE=False, C_TILES=0), w) for n, b, w in configs]


def even_c(n_cols, chunk, widths, heavy):
    """_fused_kernel's EVEN_C for a launch whose configs have column tiles of ``widths``: 2 where C
    and every column chunk are multiples of twice each width and the element is ``heavy`` (the
    launcher's call: a re-weighting or a focal term, no weight tensor, fp32 math; the column loop
    then takes two tiles an iteration, which saves ~0.5-1 SASS instruction per element and costs
    registers: plain BCE, at ~20 an element, spilled with fp32 logits), 1 where they are multiples
    of each width (no masked tail), else 0."""
    for even in (2, 1) if heavy else (1,):
        if all(n_cols % (even * b) == 0 and chunk % (even * b) == 0 for b in widths):
            return even
    return 0


def min_rows(configs):
    """The fewest rows any of ``configs`` puts in a tile."""
    return min(c["BLOCK_N"] for c, _ in configs)


def n_bucket(n_rows):
    """The autotuner's key for the batch size: next power of two, capped (large N all tune alike)."""
    return min(next_pow2(max(n_rows, 1)), 1 << 16)


@functools.lru_cache(maxsize=None)
def autotuner(configs, bucket):
    """One autotuner per config set and N bucket (each keeps its own cache of best configs)."""
    del bucket  # part of the cache key only
    if not configs:  # triton.autotune would run one config without the tile constexprs
        raise RuntimeError("dbl_kernels: no tile configuration for this launch (a bug: please report it)")
    return triton.autotune([triton.Config(dict(c), num_warps=w) for c, w in configs], key=_KEY)(_fused_kernel)


def freeze(configs):
    return tuple((tuple(sorted(c.items())), w) for c, w in configs)


@dataclasses.dataclass(frozen=True)
class _Tiles:
    """Fixed tiles instead of autotuning (always in the interpreter); tests shrink them to reach
    the column loop, its tail, the split and the persistent loop on tiny inputs."""
    one_tile_max_c: int = ONE_TILE_MAX_C
    row_tile_elems: Optional[int] = 1024 if INTERPRET else None   # None: autotuned
    row_block_c: Optional[int] = None                              # None: the first column_tiles choice
    loop_block_c: Optional[int] = 512 if INTERPRET else None      # None: autotuned
    loop_tile_elems: Optional[int] = None                          # default: 2 rows per tile
    stats_block_c: int = 512 if INTERPRET else STATS_TILE
    split: Optional[int] = None                                    # None: from the SM count
    programs: Optional[int] = None                                 # persistent grid size; None: from the SM count
    chunk_align: int = CHUNK_ALIGN


tiles = _Tiles()


@contextlib.contextmanager
def force_tiles(**changes):
    """Test hook: run with other tile choices (e.g. one_tile_max_c=0, loop_block_c=16, split=2)."""
    global tiles
    saved = tiles
    tiles = dataclasses.replace(saved, **changes)
    try:
        yield
    finally:
        tiles = saved
