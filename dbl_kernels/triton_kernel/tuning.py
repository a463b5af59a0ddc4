"""Tile choices of the Triton kernels: the autotune sets on a GPU, fixed tiles in the interpreter,
and the test hook that forces other tiles. Read ``tiles`` through this module (``tuning.tiles``):
``force_tiles`` rebinds it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Optional

import torch
import triton

from ._math import INTERPRET
from .kernels import _fused_kernel

CHUNK_ALIGN = 4096  # column-split chunks are multiples of every loop BLOCK_C, so tiles stay 16-aligned

ONE_TILE_MAX_C = 4096
# Rows regime (C <= ONE_TILE_MAX_C), as (TILE_ELEMS, num_warps): one tile of next_pow2(C) columns
# and TILE_ELEMS / next_pow2(C) rows. 8-16 elements per thread: 8 take ~40 registers, 16 ~100
# (bf16/uint8 DB-focal, sm_90); more would cut occupancy or spill.
_ROW_CONFIGS = ((1024, 4), (2048, 4), (2048, 8), (4096, 8), (8192, 16))
# ... and (BLOCK_C, TILE_ELEMS, num_warps): narrow column loops, for C that next_pow2 pads by
# more than 10% (C = 80 would leave 3/8 of the lanes idle; compute, not memory, is the limit).
_NARROW_CONFIGS = ((16, 1024, 4), (16, 2048, 8), (32, 1024, 4), (32, 2048, 8))
# Large C, as (BLOCK_C, num_warps): one row per program, columns looped (and split, for few rows).
_LOOP_CONFIGS = ((1024, 4), (2048, 8), (4096, 8), (4096, 16))
SUM_BLOCK = 1024
SCALE_BLOCK = 4096
STATS_BLOCK_C = 2048
STATS_WARPS = 8
_ROW_KEY = ["C", "REWEIGHT", "POW", "HAS_GRADIENTS", "REDUCE_NONE"]


def per_thread(dtype):
    """Elements per thread the tiles may give without spilling (fp64 math takes ~4x the registers)."""
    return 2 if dtype == torch.float64 else 16


def one_tile_max_c(dtype):
    return min(tiles.one_tile_max_c, 16 * 32 * per_thread(dtype))


def row_configs(block_c, narrow, per_thread=16):
    """[(constexprs, num_warps)] of the rows regime for next_pow2(C) == block_c."""
    if block_c < 16:  # rows of one element: a pointer per element, and ptxas spilled at 4 per thread (sm_80, by_instance)
        per_thread = min(per_thread, 2)
    configs = {}
    for t, w in _ROW_CONFIGS:
        t = max(t, block_c)
        w = min(16, max(w, t // (32 * per_thread)))
        if t <= 16 * 32 * per_thread:
            configs[(True, block_c, t, w)] = None
    if narrow:
        for b, t, w in _NARROW_CONFIGS:
            if b < block_c and t <= w * 32 * per_thread:
                configs[(False, b, t, w)] = None
    return [(dict(ONE_TILE=o, BLOCK_C=b, TILE_ELEMS=t), w) for o, b, t, w in configs]


def loop_configs(per_thread=16):
    configs = {}
    for b, w in _LOOP_CONFIGS:
        w = max(w, b // (32 * per_thread))
        if w <= 16:
            configs[(b, w)] = None
    return [(dict(ONE_TILE=False, BLOCK_C=b, TILE_ELEMS=b), w) for b, w in configs]


def needs_narrow(n_cols):
    return n_cols >= 32 and triton.next_power_of_2(n_cols) * 0.9 > n_cols


def min_rows(configs):
    return min(c["TILE_ELEMS"] // c["BLOCK_C"] for c, _ in configs)


def _autotuned(configs):
    return triton.autotune([triton.Config(c, num_warps=w) for c, w in configs], key=_ROW_KEY)(_fused_kernel)


@functools.lru_cache(maxsize=None)
def row_autotuner(block_c, narrow, per_thread):
    configs = row_configs(block_c, narrow, per_thread)
    return _autotuned(configs), min_rows(configs)


@functools.lru_cache(maxsize=None)
def loop_autotuner(per_thread):
    return _autotuned(loop_configs(per_thread))


@dataclasses.dataclass
class _Tiles:
    """Fixed tiles instead of autotuning (always in the interpreter); tests shrink them to reach
    the column loop, the split and the slot layout on tiny inputs."""
    one_tile_max_c: int = ONE_TILE_MAX_C
    row_tile_elems: Optional[int] = 1024 if INTERPRET else None   # None: autotuned
    row_block_c: Optional[int] = None                              # rows regime: None one tile, else a narrow loop
    slot_tile_elems: Optional[int] = None                          # smallest tile the partial slots allow for
    loop_block_c: Optional[int] = 512 if INTERPRET else None      # None: autotuned
    loop_tile_elems: Optional[int] = None                          # default: one row per program
    stats_block_c: int = 512 if INTERPRET else STATS_BLOCK_C
    split: Optional[int] = None                                    # None: from the SM count
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

