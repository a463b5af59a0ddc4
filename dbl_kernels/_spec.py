"""What every fused kernel receives: the launch contract shared by the C++/CUDA and Triton backends.

A kernel gets
  * ``logits`` (N x C, any float dtype, unit column stride), ``labels`` (N x C, any dtype as it is,
    unit column stride), optional ``weight`` (expanded to N x C, any strides, may be 0),
  * ``class_params`` (4 x C, contiguous, compute dtype): rows ``INV_FREQ`` 1/n_j, ``CLASS_W`` the
    per-class weight (T/n_j, sqrt(T/n_j), cb_j or 1), ``FREQ`` n_j, ``BIAS`` the NTR bias b_j,
  * ``aux`` (2, compute dtype, on the device): ``[0]`` the reduction scale (1/count for mean, else 1),
    ``[1]`` the reciprocal of the batch-max weight (by_batch) or 1,
  * the ``KernelSpec`` fields as scalars/flags,
and returns ``(loss, grad)``: loss is N x C (reduction "none") or a 0-d tensor (sum of the scaled
element losses, summed in a fixed order), in the compute dtype; grad is d loss / d logits in the
logits' dtype when ``need_grad`` else an empty tensor.

Per element (y known, y+ = max(y, 0), mirrors ``reference``):
    w  = reweight(row stats)                 REWEIGHT_* below
    w /= row max (by_instance: rebalance uses W_MAX = extreme 1/n_j, class vector uses W_MAX = max cb/T/n)
       or *= aux[1] (by_batch)
    NTR: s = y+ + lam (1 - y+), x = (z + b) s, w' = w (y+ + (1 - y+)/lam)        (logit_reg)
    l = max(x,0) - x y+ + log1p(exp(-|x|)),  u = -expm1(-l) = 1 - p_t
    focal: L = scale * u^gamma * w' * l;  dL/dx = scale * w' (sigmoid(x) - y+) u^gamma (1 + gamma p_t l/u)
           (l/u := 1 when u == 0; p_t = 1 - u)
    plain: L = scale * w' * l;            dL/dx = scale * w' (sigmoid(x) - y+)
    dL/dz = dL/dx * s;   both times weight_ij, times aux[0]; zero where y == -1.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from . import reference
from ._tracing import is_eager
from .reference import LossConfig, compute_dtype

INV_FREQ, CLASS_W, FREQ, BIAS = range(4)

REWEIGHT_NONE, REWEIGHT_REBALANCE, REWEIGHT_CLASS, REWEIGHT_CB_AVG_W, REWEIGHT_CB_AVG_N, REWEIGHT_CB_MIN_N = range(6)
NORM_NONE, NORM_INSTANCE, NORM_BATCH = range(3)
REDUCTION_NONE, REDUCTION_SUM, REDUCTION_MEAN = range(3)
# CPU op only: a mean over the labels != -1 that the op counts itself (aux[0] unused), in a pass far
# cheaper than torch's (labels != -1).sum() before the call.
REDUCTION_MEAN_COUNTED = 3
# batchmean is a sum scaled by 1/N (aux[0]); per_class has no kernel code yet (the reference runs it)
REDUCTIONS = {"none": REDUCTION_NONE, "sum": REDUCTION_SUM, "mean": REDUCTION_MEAN, "batchmean": REDUCTION_MEAN}


@dataclass(frozen=True)
class KernelSpec:
    reweight_mode: int
    weight_norm: int
    logit_reg: bool
    focal: bool
    reduction: int
    map_alpha: float
    map_beta: float
    map_gamma: float
    cb_log_beta: float
    neg_scale: float
    gamma: float
    scale: float   # balance_param * loss_weight (focal) or loss_weight
    w_max: float   # by_instance: extreme 1/n_j (rebalance) or max class weight (class vector)


def _reweight_mode(cfg: LossConfig):
    if cfg.reweight == "rebalance":
        return REWEIGHT_REBALANCE
    if cfg.reweight in ("inv", "sqrt_inv") or (cfg.reweight == "CB" and cfg.cb_mode == "by_class"):
        return REWEIGHT_CLASS
    if cfg.reweight == "CB":
        return {"average_w": REWEIGHT_CB_AVG_W, "average_n": REWEIGHT_CB_AVG_N, "min_n": REWEIGHT_CB_MIN_N}[cfg.cb_mode]
    return REWEIGHT_NONE


def class_params(class_freq: np.ndarray | None, train_num: float | None, cfg: LossConfig,
                 num_classes: int | None = None) -> np.ndarray:
    """The 4 x C per-class table in float64, from the reference's own per-class functions; computed
    on the host once per loss object and cast once to the compute dtype. Without class statistics
    (``class_freq`` None: a loss with no re-weighting and no NTR) the table is neutral."""
    if class_freq is None:
        class_freq = np.ones(num_classes)
    n = torch.tensor(np.asarray(class_freq, dtype=np.float64))  # a copy: the statistics are read-only
    table = torch.empty((4, n.shape[0]), dtype=torch.float64)
    table[INV_FREQ] = 1.0 / n
    table[FREQ] = n
    table[CLASS_W] = reference.class_weight(n, train_num, cfg)
    table[BIAS] = reference.ntr_bias(n, train_num, cfg) if cfg.logit_reg else 0.0
    return table.numpy()


def kernel_spec(table: np.ndarray, cfg: LossConfig) -> KernelSpec:
    mode = _reweight_mode(cfg)
    if mode == REWEIGHT_REBALANCE:
        inv = table[INV_FREQ]
        # sigmoid(beta * (q / r - gamma)) is monotone in q, so the row max sits at an extreme q
        w_max = float(inv.max() if cfg.map_beta >= 0 else inv.min())
    else:
        w_max = float(table[CLASS_W].max())
    return KernelSpec(
        reweight_mode=mode,
        weight_norm={None: NORM_NONE, "by_instance": NORM_INSTANCE, "by_batch": NORM_BATCH}[cfg.weight_norm],
        logit_reg=cfg.logit_reg, focal=cfg.focal, reduction=REDUCTIONS.get(cfg.reduction, REDUCTION_SUM),
        map_alpha=float(cfg.map_alpha), map_beta=float(cfg.map_beta), map_gamma=float(cfg.map_gamma),
        cb_log_beta=math.log(cfg.cb_beta), neg_scale=float(cfg.neg_scale) if cfg.logit_reg else 1.0,
        gamma=float(cfg.gamma),
        scale=float(cfg.balance_param * cfg.loss_weight if cfg.focal else cfg.loss_weight),
        w_max=w_max,
    )


def may_hold_unknown(labels: torch.Tensor) -> bool:
    """Only signed label dtypes can hold -1; for bool/uint8 the count is known on the host."""
    return labels.dtype.is_floating_point or labels.dtype.is_signed and labels.dtype != torch.bool


def known_count(labels):
    """The mean's denominator on the device: the labels != -1, at least 1, so a batch whose labels
    are all unknown gives loss 0 and gradient 0 (as the reference), not 0/0."""
    return (labels != -1).sum().clamp(min=1)


def _host_scale(labels, cfg: LossConfig, avg_factor, has_unknown):
    """The reduction scale when the host knows it (sum/none, or a mean over all N*C entries), else
    None: the mean then divides by avg_factor or by a count of known labels made on the device."""
    if cfg.reduction == "batchmean":
        return 1.0 / max(labels.shape[0], 1)
    if cfg.reduction != "mean":
        return 1.0
    if avg_factor is not None or (may_hold_unknown(labels) and has_unknown is not False):
        return None
    return 1.0 / max(labels.numel(), 1)  # no entry at all: a sum of nothing, 0


def counted_mean(labels, cfg: LossConfig, avg_factor, has_unknown):
    """Whether the mean needs a count of the known labels (then the CPU op can make it itself, as
    reduction REDUCTION_MEAN_COUNTED)."""
    return avg_factor is None and _host_scale(labels, cfg, avg_factor, has_unknown) is None


def counted_spec(spec: KernelSpec) -> KernelSpec:
    """The spec of a mean whose count the CPU op makes (REDUCTION_MEAN_COUNTED)."""
    return dataclasses.replace(spec, reduction=REDUCTION_MEAN_COUNTED)


def make_aux(logits, labels, cfg: LossConfig, spec: KernelSpec, class_freq, train_num, avg_factor=None,
             has_unknown=None, reduction=None, eager=None):
    """The 2-element device tensor [reduction scale, 1 / batch-max weight]; never syncs.

    ``has_unknown`` (False / True / None = not known) comes from the label check where one ran, so
    labels known to hold no -1 skip the counting pass of the mean. ``reduction`` is the op's code
    (default: the spec's): REDUCTION_MEAN_COUNTED gets no count, the op makes it.
    """
    dtype, device = compute_dtype(logits), logits.device
    reduction = spec.reduction if reduction is None else reduction
    host_scale = 1.0 if reduction == REDUCTION_MEAN_COUNTED else _host_scale(labels, cfg, avg_factor, has_unknown)
    by_batch = spec.weight_norm == NORM_BATCH
    if host_scale is not None and not by_batch and (is_eager(logits) if eager is None else eager):
        return _constant_aux(host_scale, dtype, device)
    if host_scale is not None:
        scale = torch.full((), host_scale, dtype=dtype, device=device)
    elif avg_factor is not None:
        scale = 1.0 / torch.as_tensor(avg_factor, dtype=dtype, device=device)
    else:
        scale = 1.0 / known_count(labels).to(dtype)
    if by_batch and labels.numel():
        w = reference.reweight(labels.to(dtype), class_freq.to(device=device, dtype=torch.float64), train_num, cfg)
        inv_norm = 1.0 / w.amax()
    else:
        inv_norm = torch.ones((), dtype=dtype, device=device)
    return torch.stack([scale.reshape(()), inv_norm.reshape(())])


_CONSTANT_AUX = {}


def _constant_aux(scale, dtype, device):
    """[scale, 1] as a cached device tensor: the common case costs no launch per call. Kernels only
    read aux, so sharing one tensor between calls is safe."""
    key = (scale, dtype, device)
    aux = _CONSTANT_AUX.get(key)
    if aux is None:
        if len(_CONSTANT_AUX) > 64:
            _CONSTANT_AUX.clear()
        aux = _CONSTANT_AUX[key] = torch.ones(2, dtype=dtype, device=device)
        aux[0] = scale
    return aux
