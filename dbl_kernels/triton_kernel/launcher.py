"""Host side of the Triton backend: the launcher of ``dbl::fused_triton`` (same contract as the
C++/CUDA op, see ``_spec.py``), its registration with the shared autograd glue, and the
device-side gradient scale.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import triton

from .. import ops
from .._spec import (MODE_ASYMMETRIC, MODE_CHECK_LABELS, MODE_FOCAL, MODE_LOGIT_REG, MODE_NORM, MODE_REDUCTION,
                     MODE_REWEIGHT, REDUCTION_MEAN, REDUCTION_NONE, REDUCTION_SUM, SCALARS)
from .._tracing import is_eager
from ..reference import compute_dtype
from . import tuning
from ._math import INTERPRET, POW_ANY, POW_NONE, POW_ONE, POW_TWO
from .kernels import (STATS_BUFFER, STATS_INLINE, STATS_MODES, STATS_NONE, _fused_kernel, _scale_kernel,
                      _stats_kernel, _sum_kernel)


def usable():
    """True when the kernels can run here: a CUDA device, or CPU tensors under TRITON_INTERPRET=1."""
    return INTERPRET or torch.cuda.is_available()


@functools.lru_cache(maxsize=None)
def _sm_count(index):
    return torch.cuda.get_device_properties(index).multi_processor_count


def _target_programs(device):
    if device.type != "cuda":
        return 1
    return 4 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def pow_mode(focal, gamma):
    if not focal or gamma == 0.0:
        return POW_NONE
    return {1.0: POW_ONE, 2.0: POW_TWO}.get(float(gamma), POW_ANY)


def labels_kind(dtype):
    """(HARD_LABELS, HAS_UNKNOWN): integer labels are exactly 0/1/-1; only signed ones hold -1."""
    return not dtype.is_floating_point, dtype.is_floating_point or dtype.is_signed


try:
    _wrap = torch.library.wrap_triton
except AttributeError:  # torch < 2.6: a plain custom op, kernels launched directly
    _wrap = None


def _launch(kernel, tensor):
    """wrap_triton only while tracing: in eager it would cost ~0.2 ms of host time per launch."""
    return _wrap(kernel) if _wrap is not None and not is_eager(tensor) else kernel


def _fused(logits: torch.Tensor, labels: torch.Tensor, weight: Optional[torch.Tensor], class_params: torch.Tensor,
           aux: torch.Tensor, reweight_mode: int, weight_norm: int, logit_reg: bool, focal: bool, reduction: int,
           map_alpha: float, map_beta: float, map_gamma: float, cb_log_beta: float, neg_scale: float, gamma: float,
           scale: float, w_max: float, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if reduction not in (REDUCTION_NONE, REDUCTION_SUM, REDUCTION_MEAN):
        raise ValueError(f"dbl::fused_triton: reduction must be 0, 1 or 2 (3, a mean counted by the op, is "
                         f"the CPU op's), got {reduction}")
    n_rows, n_cols = logits.shape
    dtype = compute_dtype(logits)
    device = logits.device
    reduce_none = reduction == REDUCTION_NONE
    grad = (torch.empty((n_rows, n_cols), dtype=logits.dtype, device=device) if need_grad
            else logits.new_empty((0,)))
    if n_rows == 0 or n_cols == 0:
        if reduce_none:
            return torch.empty((n_rows, n_cols), dtype=dtype, device=device), grad
        return aux[0] * 0, grad  # a sum of nothing (the mean's scale is finite: at most 1)
    if n_cols > 1 and logits.stride(1) != 1:
        logits = logits.contiguous()
    if n_cols > 1 and labels.stride(1) != 1:
        labels = labels.contiguous()
    if weight is None:
        wt, stride_wn, stride_wc = class_params, 0, 0
    else:
        wt = weight.expand(n_rows, n_cols)
        stride_wn, stride_wc = wt.stride()
    hard, has_unknown = labels_kind(labels.dtype)
    needs_stats = reweight_mode in STATS_MODES
    tiles = tuning.tiles
    rows_regime = n_cols <= tuning.one_tile_max_c(logits.dtype)
    consts = dict(REWEIGHT=reweight_mode, NORM=weight_norm, LOGIT_REG=bool(logit_reg),
                  POW=pow_mode(focal, gamma), REDUCE_NONE=reduce_none, HAS_GRADIENTS=bool(need_grad),
                  HAS_WEIGHT=weight is not None, HARD_LABELS=hard, HAS_UNKNOWN=has_unknown,
                  STATS=STATS_INLINE if needs_stats else STATS_NONE)
    split, chunk = 1, n_cols
    if rows_regime:
        block_c = triton.next_power_of_2(n_cols)
        if tiles.row_tile_elems is None:
            kernel, min_rows = tuning.row_autotuner(block_c, tuning.needs_narrow(n_cols),
                                                     tuning.per_thread(logits.dtype))
            meta = {}
        else:
            one = tiles.row_block_c is None
            meta = dict(ONE_TILE=one, BLOCK_C=block_c if one else tiles.row_block_c,
                        TILE_ELEMS=max(tiles.row_tile_elems, block_c if one else tiles.row_block_c))
            kernel = _fused_kernel
            min_rows = tuning.min_rows([(dict(meta, TILE_ELEMS=min(meta["TILE_ELEMS"], tiles.slot_tile_elems or
                                                                    meta["TILE_ELEMS"])), 0)])
    else:
        if tiles.loop_block_c is None:
            kernel, meta, min_rows = tuning.loop_autotuner(tuning.per_thread(logits.dtype)), {}, 1
        else:
            tile_elems = tiles.loop_tile_elems or tiles.loop_block_c
            kernel = _fused_kernel
            meta = dict(ONE_TILE=False, BLOCK_C=tiles.loop_block_c, TILE_ELEMS=tile_elems)
            min_rows = tile_elems // tiles.loop_block_c
        split = tiles.split or max(1, min(-(-_target_programs(device) // -(-n_rows // min_rows)),
                                          -(-n_cols // tiles.chunk_align)))
        chunk = -(-n_cols // split)
        chunk = -(-chunk // tiles.chunk_align) * tiles.chunk_align
        split = -(-n_cols // chunk)
        if needs_stats and split > 1:
            consts["STATS"] = STATS_BUFFER
    n_slot_rows = -(-n_rows // min_rows)
    if reduce_none:
        out = torch.empty((n_rows, n_cols), dtype=dtype, device=device)
    else:
        out = torch.empty((split * n_slot_rows,), dtype=dtype, device=device)
    stats = aux
    if consts["STATS"] == STATS_BUFFER:
        stats = torch.empty((2, split, n_rows), dtype=dtype, device=device)
        _launch(_stats_kernel, logits)[(n_rows, split)](
            labels, class_params, stats, n_rows, n_cols, labels.stride(0), chunk, split,
            REWEIGHT=reweight_mode, HARD_LABELS=hard, HAS_UNKNOWN=has_unknown, BLOCK_C=tiles.stats_block_c,
            num_warps=tuning.STATS_WARPS)

    def grid(meta):
        rows = -(-meta["TILE_ELEMS"] // meta["BLOCK_C"])
        return (triton.cdiv(n_rows, rows), split)

    if kernel is _fused_kernel:  # fixed tiles: enough warps for <= 16 (fp64: 8) elements per thread
        meta["num_warps"] = min(16, max(4, meta["TILE_ELEMS"] // (32 * tuning.per_thread(logits.dtype))))
    _launch(kernel, logits)[grid](
        logits, labels, wt, class_params, aux, stats, out, grad,
        n_rows, n_cols, logits.stride(0), labels.stride(0), stride_wn, stride_wc, chunk, split, n_slot_rows,
        map_alpha, map_beta, map_gamma, cb_log_beta, neg_scale, gamma, scale, w_max,
        MIN_ROWS=min_rows, **consts, **meta)
    if reduce_none:
        return out, grad
    loss = torch.empty((), dtype=dtype, device=device)
    _launch(_sum_kernel, logits)[(1,)](out, out.numel(), loss, BLOCK=128 if INTERPRET else tuning.SUM_BLOCK)
    return loss, grad


def scale_grad(grad, grad_output):
    """In place ``grad *= grad_output`` for a 1-element ``grad_output``, read on the device: no host
    sync, and when it is exactly 1.0 the kernel returns before touching ``grad``."""
    if (grad_output.numel() != 1 or grad_output.device != grad.device or not grad.is_contiguous()
            or grad.numel() == 0):
        grad.mul_(grad_output)
        return
    n = grad.numel()
    blocks = triton.cdiv(n, tuning.SCALE_BLOCK)
    programs = min(blocks, _target_programs(grad.device) * 2) if grad.is_cuda else min(blocks, 4)
    iters = triton.cdiv(blocks, programs)
    _scale_kernel[(programs,)](grad, grad_output, n, iters, BLOCK=tuning.SCALE_BLOCK)



_SCALAR = {name: i for i, name in enumerate(SCALARS)}


def _fused_v2(logits: torch.Tensor, labels: torch.Tensor, crow_indices: Optional[torch.Tensor],
              col_indices: Optional[torch.Tensor], weight: Optional[torch.Tensor], class_params: torch.Tensor,
              aux: torch.Tensor, row_stats: Optional[torch.Tensor], modes: list[int], scalars: list[float],
              need_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The op of kernel contract v2 (_spec.py): unpacks modes and scalars for the launcher, which
    implements none of the optional features (loss._fused_supports sends those calls elsewhere)."""
    if crow_indices is not None or col_indices is not None:
        raise ValueError("dbl::fused_triton: CSR labels are not implemented; pass dense labels")
    if row_stats is not None:
        raise ValueError("dbl::fused_triton: row_stats are not implemented; pass row_stats=None")
    if modes[MODE_CHECK_LABELS] or modes[MODE_ASYMMETRIC]:
        raise ValueError("dbl::fused_triton: check_labels and the asymmetric form are not implemented "
                         "(modes[5] and modes[6] must be 0)")
    if modes[MODE_REDUCTION] not in (REDUCTION_NONE, REDUCTION_SUM, REDUCTION_MEAN):
        raise ValueError(f"dbl::fused_triton: reduction must be 0, 1 or 2 (3, a mean counted by the op, is "
                         f"the CPU op's; 4, per_class, is not implemented), got {modes[MODE_REDUCTION]}")
    s = [scalars[_SCALAR[name]] for name in ("map_alpha", "map_beta", "map_gamma", "cb_log_beta", "neg_scale",
                                             "gamma", "scale", "w_max")]
    return _fused(logits, labels, weight, class_params, aux, modes[MODE_REWEIGHT], modes[MODE_NORM],
                  bool(modes[MODE_LOGIT_REG]), bool(modes[MODE_FOCAL]), modes[MODE_REDUCTION], *s, need_grad)


if _wrap is not None:
    fused = torch.library.triton_op("dbl::fused_triton", _fused_v2, mutates_args=())
else:
    fused = torch.library.custom_op("dbl::fused_triton", _fused_v2, mutates_args=())
ops.register(fused, device_scale=scale_grad, features=frozenset())
