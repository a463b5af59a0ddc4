"""What every fused kernel receives: the launch contract shared by the C++/CUDA and Triton backends.

Each fused op has the schema

    fused(Tensor logits, Tensor labels, Tensor? crow_indices, Tensor? col_indices, Tensor? weight,
          Tensor class_params, Tensor aux, Tensor? row_stats, int[] modes, float[] scalars, bool need_grad)
        -> (Tensor loss, Tensor grad)

(the options travel as two lists: every top-level argument costs host time per call). It gets
  * ``logits`` (N x C, any float dtype), ``labels``: dense N x C of any dtype, or CSR: the stored
    values (each 1 or -1) with ``crow_indices`` / ``col_indices`` (int64, each row's columns ascending
    and unique), every entry not stored a negative; optional ``weight`` (expanded to N x C, any
    strides, may be 0);
  * ``class_params`` (5 x C, contiguous, compute dtype): rows ``INV_FREQ`` 1/n_j, ``CLASS_W`` the
    per-class weight (T/n_j, sqrt(T/n_j), cb_j or 1), ``FREQ`` n_j, ``BIAS`` the NTR bias b_j,
    ``POS_W`` ASL's weight of the positive log term (1 unless set);
  * ``aux`` (2, compute dtype, on the device): ``[0]`` the reduction scale (1/count for mean, 1/N for
    batchmean, else 1); ``[1]`` 1 / the batch-max weight (by_batch), read only with ``row_stats``;
  * ``row_stats``: None, or 2 x N (compute dtype): ``reference.row_statistics`` (A, B) over all the
    classes, for a call on a column slice of a wider problem (the chunked classifier); then the
    kernel uses them, and aux[1], instead of its own statistics pass;
  * ``modes``: MODE_* below; ``scalars``: SCALARS below (KernelSpec fields);
and returns ``(loss, grad)``: loss is N x C (reduction "none"), a C-vector (per_class: column sums)
or a 0-d tensor (the sum, in a fixed order), in the compute dtype, all times aux[0]; grad is d loss /
d logits in the logits' dtype when ``need_grad``, else an empty tensor. The CPU op alone may count
the mean itself (REDUCTION_MEAN_COUNTED) and check the label values in its own pass (MODE_CHECK_LABELS,
raising ValueError with dbl_kernels/_labels.py's messages).

Per element (y known, y+ = max(y, 0), mirrors ``reference``):
    w  = reweight(row stats)                 REWEIGHT_* below
    w /= row max (by_instance: rebalance uses W_MAX = extreme 1/n_j, class vector uses W_MAX = max cb/T/n)
       or the batch max (by_batch)
    NTR: s = y+ + lam (1 - y+), x = (z + b) s, w' = w (y+ + (1 - y+)/lam)        (logit_reg)
    DB form: l = max(x,0) - x y+ + log1p(exp(-|x|)),  u = -expm1(-l) = 1 - p_t
      focal: L = scale * u^gamma * w' * l;  dL/dx = scale * w' (sigmoid(x) - y+) u^gamma (1 + gamma p_t l/u)
             (l/u := 1 when u == 0; p_t = 1 - u)
      plain: L = scale * w' * l;            dL/dx = scale * w' (sigmoid(x) - y+)
    asymmetric form (MODE_ASYMMETRIC): L = scale * w' * L_e, L_e = ASL's element loss on the target
      t = y+ (1 - smoothing) + smoothing/2 with gamma, gamma_neg, clip, POS_W and focus_grad
      (``reference._asl_terms`` / ``_asl_derivative``);
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

INV_FREQ, CLASS_W, FREQ, BIAS, POS_W = range(5)
TABLE_ROWS = 5

REWEIGHT_NONE, REWEIGHT_REBALANCE, REWEIGHT_CLASS, REWEIGHT_CB_AVG_W, REWEIGHT_CB_AVG_N, REWEIGHT_CB_MIN_N = range(6)
NORM_NONE, NORM_INSTANCE, NORM_BATCH = range(3)
REDUCTION_NONE, REDUCTION_SUM, REDUCTION_MEAN = range(3)
# CPU op only: a mean over the labels != -1 that the op counts itself (aux[0] unused), in a pass far
# cheaper than torch's (labels != -1).sum() before the call.
REDUCTION_MEAN_COUNTED = 3
REDUCTION_PER_CLASS = 4  # the C-vector of column sums
# batchmean is a sum scaled by 1/N (aux[0])
REDUCTIONS = {"none": REDUCTION_NONE, "sum": REDUCTION_SUM, "mean": REDUCTION_MEAN, "batchmean": REDUCTION_MEAN,
              "per_class": REDUCTION_PER_CLASS}
# Positions in the op's int[] modes and float[] scalars.
(MODE_REWEIGHT, MODE_NORM, MODE_LOGIT_REG, MODE_FOCAL, MODE_REDUCTION, MODE_CHECK_LABELS, MODE_ASYMMETRIC,
 MODE_FOCUS_GRAD) = range(8)
SCALARS = ("map_alpha", "map_beta", "map_gamma", "cb_log_beta", "neg_scale", "gamma", "gamma_neg", "clip",
           "smoothing", "scale", "w_max")


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
    gamma: float   # the focal exponent (the positives' in the asymmetric form)
    scale: float   # balance_param * loss_weight (focal) or loss_weight
    w_max: float   # by_instance: extreme 1/n_j (rebalance) or max class weight (class vector)
    gamma_neg: float = 2.0
    clip: float = 0.0
    smoothing: float = 0.0
    asymmetric: bool = False
    focus_grad: bool = True

    def modes(self, reduction: int | None = None, check_labels: bool = False) -> list[int]:
        return [self.reweight_mode, self.weight_norm, int(self.logit_reg), int(self.focal),
                self.reduction if reduction is None else reduction, int(check_labels), int(self.asymmetric),
                int(self.focus_grad)]

    def scalars(self) -> list[float]:
        return [float(getattr(self, name)) for name in SCALARS]


def _reweight_mode(cfg: LossConfig):
    if cfg.reweight == "rebalance":
        return REWEIGHT_REBALANCE
    if cfg.reweight in ("inv", "sqrt_inv") or (cfg.reweight == "CB" and cfg.cb_mode == "by_class"):
        return REWEIGHT_CLASS
    if cfg.reweight == "CB":
        return {"average_w": REWEIGHT_CB_AVG_W, "average_n": REWEIGHT_CB_AVG_N, "min_n": REWEIGHT_CB_MIN_N}[cfg.cb_mode]
    return REWEIGHT_NONE


def class_params(class_freq: np.ndarray | None, train_num: float | None, cfg: LossConfig,
                 num_classes: int | None = None, pos_weight=None) -> np.ndarray:
    """The 5 x C per-class table in float64, from the reference's own per-class functions; computed
    on the host once per loss object and cast once to the compute dtype. Without class statistics
    (``class_freq`` None: a loss with no re-weighting and no NTR) the table is neutral."""
    if class_freq is None:
        class_freq = np.ones(num_classes)
    n = torch.tensor(np.asarray(class_freq, dtype=np.float64))  # a copy: the statistics are read-only
    table = torch.empty((TABLE_ROWS, n.shape[0]), dtype=torch.float64)
    table[POS_W] = 1.0 if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float64).cpu()
    table[INV_FREQ] = 1.0 / n
    table[FREQ] = n
    table[CLASS_W] = reference.class_weight(n, train_num, cfg)
    table[BIAS] = reference.ntr_bias(n, train_num, cfg) if cfg.logit_reg else 0.0
    return table.numpy()


def kernel_spec(table: np.ndarray, cfg: LossConfig, pos_weight: bool = False) -> KernelSpec:
    """The kernel options of ``cfg`` (``table``: its class_params). ``pos_weight``: the table's
    POS_W row was given, which selects the asymmetric form even without an asymmetric option (as
    ``reference.focal_bce`` does)."""
    asymmetric = cfg.asymmetric or pos_weight
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
        gamma=cfg.gammas[0] if asymmetric else float(cfg.gamma),
        scale=float(cfg.balance_param * cfg.loss_weight if cfg.focal else cfg.loss_weight),
        w_max=w_max, gamma_neg=cfg.gammas[1] if asymmetric else float(cfg.gamma), clip=float(cfg.clip),
        smoothing=float(cfg.smoothing), asymmetric=asymmetric, focus_grad=cfg.focus_grad,
    )


def may_hold_unknown(labels: torch.Tensor) -> bool:
    """Only signed label dtypes can hold -1; for bool/uint8 the count is known on the host."""
    return labels.dtype.is_floating_point or labels.dtype.is_signed and labels.dtype != torch.bool


def known_count(labels):
    """The mean's denominator on the device: the labels != -1, at least 1, so a batch whose labels
    are all unknown gives loss 0 and gradient 0 (as the reference), not 0/0."""
    return (labels != -1).sum().clamp(min=1)


def _host_scale(labels, cfg: LossConfig, avg_factor, has_unknown, shape=None):
    """The reduction scale when the host knows it (sum/none, or a mean over all N*C entries), else
    None: the mean then divides by avg_factor or by a count of known labels made on the device.
    ``shape``: the problem's N x C (default: the labels', which CSR values are not)."""
    n_rows, n_cols = labels.shape if shape is None else shape
    if cfg.reduction == "batchmean":
        return 1.0 / max(n_rows, 1)
    if cfg.reduction != "mean":
        return 1.0
    if avg_factor is not None or (may_hold_unknown(labels) and has_unknown is not False):
        return None
    return 1.0 / max(n_rows * n_cols, 1)  # no entry at all: a sum of nothing, 0


def counted_mean(labels, cfg: LossConfig, avg_factor, has_unknown, shape=None):
    """Whether the mean needs a count of the known labels (then the CPU op can make it itself, as
    reduction REDUCTION_MEAN_COUNTED)."""
    return avg_factor is None and _host_scale(labels, cfg, avg_factor, has_unknown, shape) is None


def counted_spec(spec: KernelSpec) -> KernelSpec:
    """The spec of a mean whose count the CPU op makes (REDUCTION_MEAN_COUNTED)."""
    return dataclasses.replace(spec, reduction=REDUCTION_MEAN_COUNTED)


def make_aux(logits, labels, cfg: LossConfig, spec: KernelSpec, class_freq, train_num, avg_factor=None,
             has_unknown=None, reduction=None, eager=None, batch_max=True):
    """The 2-element device tensor [reduction scale, 1 / batch-max weight]; never syncs.
    ``batch_max=False``: aux[1] is left 1 (kernels that find the batch max themselves; the only way
    for CSR ``labels``, their stored values, which cannot give it).

    ``has_unknown`` (False / True / None = not known) comes from the label check where one ran, so
    labels known to hold no -1 skip the counting pass of the mean. ``reduction`` is the op's code
    (default: the spec's): REDUCTION_MEAN_COUNTED gets no count, the op makes it.
    """
    dtype, device = compute_dtype(logits), logits.device
    reduction = spec.reduction if reduction is None else reduction
    host_scale = (1.0 if reduction == REDUCTION_MEAN_COUNTED
                  else _host_scale(labels, cfg, avg_factor, has_unknown, logits.shape))
    by_batch = batch_max and spec.weight_norm == NORM_BATCH
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


def aux_is_constant(cfg: LossConfig, spec: KernelSpec, labels, reduction, batch_max=True) -> bool:
    """Whether make_aux (same arguments, dense labels, no avg_factor, no label check) gives the same
    tensor for every call with labels of this shape and dtype: no count of the labels' values and
    no batch maximum."""
    if batch_max and spec.weight_norm == NORM_BATCH:
        return False
    return reduction == REDUCTION_MEAN_COUNTED or _host_scale(labels, cfg, None, None) is not None


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
