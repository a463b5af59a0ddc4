"""Public API: ``DistributionBalancedLoss``, ``distribution_balanced_loss`` and ``ResampleLoss``."""
from __future__ import annotations

import dataclasses
import os
import warnings
from typing import NamedTuple, Optional, Union

import torch
from torch import nn
from torch.autograd import forward_ad

from . import _rows, _sparse, backends, ops, reference
from ._labels import check_label_values
from ._spec import (REDUCTION_MEAN_COUNTED, REDUCTIONS, aux_is_constant, class_params, counted_mean, kernel_spec,
                    make_aux)
from ._tracing import is_eager, transformed
from .reference import LossConfig
from .stats import PRESETS, ClassStats

StatsLike = Union[ClassStats, str]

class _Plan(NamedTuple):
    """What a fused call decided, for the next call with the same input signature: the module
    state it was decided under, and the op's arguments that do not depend on the values."""
    state: tuple  # (backend, config, validate_labels, DBL_BACKEND), compared by identity/equality
    table: torch.Tensor  # the class-table buffer and its version when the plan was made
    version: int
    op: object
    params: torch.Tensor
    aux: torch.Tensor
    scalars: tuple


_LOGIT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(LossConfig))
_DB_FIELDS = tuple(f for f in _CONFIG_FIELDS if f not in ("smoothing", "focus_grad"))  # ASL's alone

# The authors' configs per data set (their configs/coco and configs/voc DB-focal files).
PRESET_CONFIGS = {
    "coco-mlt": dict(),
    "voc-mlt": dict(map_gamma=0.3, neg_scale=5.0),
}


def _as_stats(stats):
    if isinstance(stats, ClassStats):
        return stats
    if isinstance(stats, str):
        return ClassStats.preset(stats) if stats in PRESETS else ClassStats.load(stats)
    raise TypeError(f"stats must be a ClassStats or a preset name ('coco-mlt', 'voc-mlt'), got {type(stats).__name__}; "
                    "build one with ClassStats.from_labels / from_counts / load")


def _check_inputs(logits, labels, weight, num_classes, validate_labels):
    """Shape/dtype checks on the host; value checks on CPU tensors (on accelerators only on request,
    because reading values back would stall the device). Returns whether labels hold a -1, where a
    value check ran (else None)."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if logits.dtype not in _LOGIT_DTYPES:
        raise TypeError(f"logits must be float16, bfloat16, float32 or float64, got {logits.dtype}; "
                        "cast with logits.float()")
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D (N x C), got shape {tuple(logits.shape)}; "
                         "flatten extra dimensions into N first")
    csr = _sparse.is_csr(labels)
    if not csr and labels.shape != logits.shape:  # before the class count: the likelier mistake
        raise ValueError(f"labels must have the logits' shape {tuple(logits.shape)}, got {tuple(labels.shape)}")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(f"logits have C={logits.shape[1]} columns but the class statistics have "
                         f"{num_classes} classes; pass the statistics of this label space")
    if labels.device != logits.device:
        raise ValueError(f"labels are on {labels.device} but logits on {logits.device}; move them to one device")
    if weight is not None:
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a torch.Tensor or None, got {type(weight).__name__}")
        try:
            torch.broadcast_shapes(weight.shape, logits.shape)
        except RuntimeError:
            raise ValueError(f"weight of shape {tuple(weight.shape)} does not broadcast to {tuple(logits.shape)}") from None
        if torch.broadcast_shapes(weight.shape, logits.shape) != logits.shape:
            raise ValueError(f"weight of shape {tuple(weight.shape)} would enlarge the loss beyond {tuple(logits.shape)}")
        if weight.device != logits.device:
            raise ValueError(f"weight is on {weight.device} but logits on {logits.device}")
    if csr:
        _sparse.check_csr(labels, logits.shape, _default_check(labels, validate_labels))
        return None
    if labels.is_complex() or labels.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        raise TypeError(f"labels dtype {labels.dtype} is not supported; use bool, uint8, int or float labels")
    if labels.requires_grad:
        raise ValueError("labels require grad, but the loss is not differentiable in the labels; pass labels.detach()")
    if _default_check(labels, validate_labels) and labels.numel() and labels.dtype != torch.bool:
        return check_label_values(labels, _fast_label_check)
    return None


def _default_check(labels, validate_labels):
    """Whether label values are checked: on request, else for plain CPU tensors (on accelerators it
    would stall the device)."""
    if validate_labels is not None:
        return validate_labels
    return (labels.device.type == "cpu" and not torch.compiler.is_compiling()
            and not torch._C._functorch.is_functorch_wrapped_tensor(labels))


def _fast_label_check(labels):
    """The C++ one-pass label check where it applies (plain calls on CPU tensors), else None."""
    if labels.device.type == "cpu" and backends.has_backend("cpu") and is_eager(labels):
        return torch.ops.dbl._check_labels(labels)
    return None


def _as_config(kwargs):
    unknown = sorted(set(kwargs) - set(_DB_FIELDS))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}; the loss accepts {list(_DB_FIELDS)} and backend")
    return LossConfig(**kwargs)


class _FusedLoss(nn.Module):
    """What every loss of the family shares: input checks, the backend choice and the fused call.

    A subclass sets ``config`` (a LossConfig) and provides ``_class_table(num_classes)`` (the 5 x C
    float64 table tensor and its KernelSpec) and ``_reference_inputs()`` (class_freq, train_num and
    pos_weight for the reference, each possibly None).
    """

    def __init__(self, config: LossConfig, backend: str, validate_labels: Optional[bool]) -> None:
        super().__init__()
        backends.check_backend_name(backend)
        self.config = config
        self.backend = backend
        self.validate_labels = validate_labels
        self._cast_cache = {}
        self._ops = {}
        self._plans = {}  # input signature -> _Plan: the common call skips the decisions (host time)

    num_classes: Optional[int] = None  # None: any

    def _params(self, dtype, device=None, eager=True, num_classes=None):
        """The class table in the compute dtype on ``device``, cast once per (device, dtype, table)
        and buffer version (a module not moved with ``.to()`` still works, like the reference)."""
        buf, _ = self._class_table(num_classes)
        device = buf.device if device is None else torch.device(device)
        if not eager or buf.is_inference():
            # data_ptr() cannot be traced (the cast joins the graph); inference tensors (a module
            # built under torch.inference_mode) have no version counter to key a cache on
            return buf.to(device=device, dtype=dtype).contiguous()
        key = (device, dtype, buf.shape[1])
        cached = self._cast_cache.get(key)
        if cached is None or cached[0] is not buf or cached[1] != buf._version:
            if len(self._cast_cache) > 8:
                self._cast_cache.clear()
            cached = self._cast_cache[key] = (buf, buf._version, buf.to(device=device, dtype=dtype).contiguous())
        return cached[2]

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, weight: Optional[torch.Tensor] = None,
                avg_factor: Optional[Union[float, torch.Tensor]] = None, reduction: Optional[str] = None) -> torch.Tensor:
        """The loss of N x C ``logits`` against ``labels`` (dense N x C, or a CSR tensor of 1 / -1
        entries); ``weight`` broadcasts to N x C and multiplies the element losses; ``avg_factor``
        replaces the mean's count; ``reduction`` overrides the module's for this call."""
        if self._plans and weight is None and avg_factor is None and reduction is None:
            loss = self._planned(logits, labels)
            if loss is not None:
                return loss
        cfg = self.config if reduction is None else dataclasses.replace(self.config, reduction=reduction)
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
        backend = backends.resolve(self.backend, logits.device.type)
        if backend != "reference" and weight is not None and weight.requires_grad and torch.is_grad_enabled():
            backend = "reference"  # the fused kernels treat weight as a constant
        if backend != "reference" and transformed(logits, weight):
            backend = "reference"  # torch.func transforms and forward-mode AD: the fused ops have neither
        csr = _sparse.is_csr(labels)
        features = (ops.features(backends.fused_op(backend), logits.device.type) if backend != "reference"
                    else frozenset())
        missing = _fused_missing(features, cfg, csr, self._reference_inputs()[2]) if backend != "reference" else ()
        if missing:
            if is_eager(logits):
                _warn_unsupported(backend, logits.device.type, missing)
            backend, features = "reference", frozenset()
        # the CPU op checks dense label values in its own pass (no torch pass before the call)
        in_kernel = ("check_labels" in features and not csr and _default_check(labels, self.validate_labels)
                     and is_eager(logits))
        has_unknown = _check_inputs(logits, labels, weight, self.num_classes,
                                    False if in_kernel else self.validate_labels)
        if backend == "reference":
            return self._reference_loss(logits, labels, cfg, weight, avg_factor)
        return self._fused(backend, logits, labels, weight, avg_factor, cfg, has_unknown, in_kernel, features)

    def _signature(self, logits, labels):
        need_grad = logits.requires_grad and torch.is_grad_enabled()
        return (logits.dtype, labels.dtype, logits.shape, labels.shape, logits.device, labels.device, need_grad)

    def _state(self):
        return (self.backend, self.config, self.validate_labels, os.environ.get("DBL_BACKEND"))

    def _planned(self, logits, labels):
        """The loss by a recorded plan when one fits this call (same input signature and module
        state, plain eager dense tensors), else None (the full path decides)."""
        if (type(labels) is not torch.Tensor or labels.layout != torch.strided or labels.requires_grad
                or not is_eager(logits) or forward_ad._current_level >= 0):
            return None
        plan = self._plans.get(self._signature(logits, labels))
        if (plan is None or plan.table._version != plan.version
                or plan.table is not self._class_table(logits.shape[1])[0]
                or any(a is not b and a != b for a, b in zip(plan.state, self._state()))):
            return None
        tensors = (logits, labels, None, None, None, plan.params, plan.aux, None)
        reference_loss = (self._reference_loss, (labels, self.config, None, None)) if plan.scalars[-1] else None
        return ops.call(plan.op, tensors, plan.scalars, reference_loss, True)

    def _record(self, logits, labels, op, params, aux, scalars):
        if len(self._plans) >= 8:
            self._plans.clear()
        table = self._class_table(logits.shape[1])[0]
        if table.is_inference():  # a module built under inference_mode: no version counter to watch
            return
        self._plans[self._signature(logits, labels)] = _Plan(self._state(), table, table._version, op, params, aux,
                                                            scalars)

    def _fused(self, backend, logits, labels, weight, avg_factor, cfg, has_unknown, check_labels, features):
        csr = row_stats = inv_batch = None
        if _sparse.is_csr(labels):
            if avg_factor is None and cfg.reduction == "mean" and backend != "cpu":
                avg_factor = _sparse.known_count(labels)  # N * C - the stored -1s, on the device
            if "csr_stats" not in features:  # the kernel reads no statistics from CSR: hand them down
                row_stats, inv_batch = self._csr_row_stats(labels, reference.compute_dtype(logits), cfg)
            csr, labels = (labels.crow_indices(), labels.col_indices()), labels.values()
        reduction = REDUCTIONS[cfg.reduction]
        csr_mean = csr is not None and cfg.reduction == "mean" and avg_factor is None
        if backend == "cpu" and (csr_mean or counted_mean(labels, cfg, avg_factor, has_unknown, logits.shape)):
            reduction = REDUCTION_MEAN_COUNTED  # the CPU op counts the known labels in its own pass
        eager = is_eager(logits)
        num_classes = logits.shape[1]
        _, spec = self._class_table(num_classes)
        class_freq, train_num, _ = self._reference_inputs()
        # every kernel finds the batch max itself (aux[1] is read only with row_stats)
        aux = make_aux(logits, labels, cfg, spec, class_freq, train_num, avg_factor, has_unknown, reduction, eager,
                       batch_max=False)
        if inv_batch is not None:
            aux = torch.stack([aux[0], inv_batch.to(aux.dtype).reshape(())])
        need_grad = torch.is_grad_enabled() and logits.requires_grad
        kernel_weight = None if weight is None else weight.detach().expand(logits.shape)  # strides: the ops' business
        params = self._params(reference.compute_dtype(logits), logits.device, eager, num_classes)
        op, scalars = self._op(backend, spec, reduction, need_grad, check_labels)
        crow, col = csr if csr is not None else (None, None)
        tensors = (logits, labels, crow, col, kernel_weight, params, aux, row_stats)
        # Calls whose arguments depend only on the input signature (no weight or avg_factor, dense
        # labels, a constant aux, labels checked in the op or not at all) are remembered.
        if (eager and weight is None and avg_factor is None and csr is None and cfg is self.config
                and aux_is_constant(cfg, spec, labels, reduction, False) and (check_labels or not _default_check(
                    labels, self.validate_labels))):
            self._record(logits, labels, op, params, aux, scalars)
        # for a differentiable backward (create_graph=True): the reference, called only then
        reference_loss = None
        if need_grad and eager:
            dense = labels if csr is None else torch.sparse_csr_tensor(  # the caller's own, valid, indices
                crow, col, labels, size=logits.shape, check_invariants=False)
            reference_loss = (self._reference_loss, (dense, cfg, weight, avg_factor))
        return ops.call(op, tensors, scalars, reference_loss, eager)

    def _csr_row_stats(self, labels, dtype, cfg):
        """(row_stats, 1 / batch max or None) of CSR ``labels`` for a kernel that reads no statistics
        from CSR: the row statistics from the stored entries; by_batch's maximum from dense column
        chunks (never the whole N x C at once)."""
        if not reference.needs_row_statistics(cfg):
            return None, None
        class_freq, train_num, _ = self._reference_inputs()
        chunked = _rows.ChunkedLabels(labels, dtype)
        if cfg.weight_norm == "by_batch":
            rows = _rows.row_terms(chunked, _rows.column_chunks(labels.shape), class_freq, train_num, cfg)[:3]
        else:
            rows = _rows.sparse_row_terms(chunked, class_freq, cfg) + (None, None)
        return _rows.kernel_row_stats(rows, cfg, dtype)

    def _reference_loss(self, logits, labels, cfg, weight, avg_factor):
        if _sparse.is_csr(labels):  # the reference may densify
            labels = _sparse.to_dense(labels)
        class_freq, train_num, pos_weight = self._reference_inputs()
        return reference.distribution_balanced_loss(logits, labels, class_freq, train_num, cfg, weight=weight,
                                                    avg_factor=avg_factor, pos_weight=pos_weight)

    def _op(self, backend, spec, reduction, need_grad, check_labels=False):
        """The fused op and its non-tensor arguments, built once per call signature."""
        key = (backend, spec, reduction, need_grad, check_labels)
        entry = self._ops.get(key)
        if entry is None:
            if len(self._ops) > 32:
                self._ops.clear()
            args = ops.op_args(*(None,) * 5, spec, need_grad, reduction, check_labels=check_labels)
            entry = self._ops[key] = (backends.fused_op(backend), args[ops.N_TENSORS:])
        return entry

    def extra_repr(self):
        cfg = ", ".join(f"{k}={getattr(self.config, k)!r}" for k in _CONFIG_FIELDS)
        return f"num_classes={self.num_classes}, {cfg}, backend={self.backend!r}"


def _fused_missing(features, cfg, csr, pos_weight=None):
    """What this call needs of the kernel contract that a fused backend with ``features``
    (ops.register) lacks; empty: the kernel computes it. A ``pos_weight`` selects the asymmetric
    form (reference.focal_bce)."""
    need = {"asymmetric"} if cfg.asymmetric or pos_weight is not None else set()
    if cfg.reduction == "per_class":
        need.add("per_class")
    if csr:
        need.add("csr")
    return need - features


def _fused_supports(features, cfg, csr, pos_weight=None):
    return not _fused_missing(features, cfg, csr, pos_weight)


_WHAT = {"asymmetric": "the asymmetric form (ASL, DB-ASL, pos_weight)", "per_class": "reduction='per_class'",
         "csr": "CSR labels"}
_WARNED = set()


def _warn_unsupported(backend, device_type, missing):
    """Once per (backend, device, missing features): the call runs the reference, not silently."""
    key = (backend, device_type, frozenset(missing))
    if key in _WARNED:
        return
    _WARNED.add(key)
    what = ", ".join(_WHAT[m] for m in sorted(missing))
    warnings.warn(f"dbl_kernels: the {backend} kernel does not compute {what} on {device_type} tensors, so these "
                  "calls run the pure-PyTorch reference (slower): this build of the kernel lacks it (README: "
                  "Backends says which kernel computes what); pass backend='reference' to choose the reference "
                  "explicitly.", UserWarning, stacklevel=3)


class DistributionBalancedLoss(_FusedLoss):
    """Distribution-Balanced loss (Wu et al., ECCV 2020) for multi-label classification.

    ``stats`` is a :class:`ClassStats` (or a preset name). Defaults are the authors' COCO-MLT
    config. ``forward(logits, labels, weight=None)`` takes N x C logits and labels (1 positive,
    0 negative, -1 unknown, or soft labels in [0, 1]). ``gamma_neg`` (None: ``gamma``) and
    ``clip`` give DB asymmetric focusing (see README: DB-ASL).
    """

    def __init__(self, stats: StatsLike, *, reweight: Optional[str] = "rebalance", weight_norm: Optional[str] = None,
                 focal: bool = True, gamma: float = 2.0, balance_param: float = 2.0, logit_reg: bool = True,
                 neg_scale: float = 2.0, init_bias: float = 0.05, ntr_bias: str = "official", map_alpha: float = 0.1,
                 map_beta: float = 10.0, map_gamma: float = 0.2, cb_beta: float = 0.9, cb_mode: str = "average_w",
                 loss_weight: float = 1.0, reduction: str = "mean", gamma_neg: Optional[float] = None,
                 clip: float = 0.0, backend: str = "auto", validate_labels: Optional[bool] = None) -> None:
        config = LossConfig(reweight=reweight, weight_norm=weight_norm, focal=focal, gamma=gamma,
                            balance_param=balance_param, logit_reg=logit_reg, neg_scale=neg_scale,
                            init_bias=init_bias, ntr_bias=ntr_bias, map_alpha=map_alpha, map_beta=map_beta,
                            map_gamma=map_gamma, cb_beta=cb_beta, cb_mode=cb_mode, loss_weight=loss_weight,
                            reduction=reduction, gamma_neg=gamma_neg, clip=clip)
        super().__init__(config, backend, validate_labels)
        self.stats = _as_stats(stats)
        self._table = class_params(self.stats.class_freq, self.stats.train_num, self.config)
        self.spec = kernel_spec(self._table, self.config)
        self.register_buffer("class_freq", torch.from_numpy(self.stats.class_freq.copy()), persistent=False)
        self.register_buffer("class_params", torch.from_numpy(self._table.copy()), persistent=False)

    def _apply(self, fn, *args, **kwargs):
        """Buffers follow the device of ``.to()`` / ``.cuda()``, but the class statistics stay
        float64 when a model is cast to half precision (fp16 would round or overflow the counts)."""
        super()._apply(fn, *args, **kwargs)
        device = self.class_params.device
        self.class_freq = torch.from_numpy(self.stats.class_freq.copy()).to(device)
        self.class_params = torch.from_numpy(self._table.copy()).to(device)
        return self

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "DistributionBalancedLoss":
        """The statistics and the authors' loss config of ``"coco-mlt"`` or ``"voc-mlt"``."""
        if name not in PRESET_CONFIGS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESET_CONFIGS)}")
        return cls(ClassStats.preset(name), **{**PRESET_CONFIGS[name], **overrides})

    @property
    def num_classes(self) -> int:
        return self.stats.num_classes

    def _class_table(self, num_classes=None):
        return self._buffers["class_params"], self.spec  # not self.class_params: Module.__getattr__ is slow

    def _reference_inputs(self):
        return self._buffers["class_freq"], self.stats.train_num, None


def distribution_balanced_loss(logits: torch.Tensor, labels: torch.Tensor, stats: StatsLike,
                               weight: Optional[torch.Tensor] = None, *, backend: str = "auto",
                               validate_labels: Optional[bool] = None,
                               avg_factor: Optional[Union[float, torch.Tensor]] = None, **options) -> torch.Tensor:
    """Functional form of :class:`DistributionBalancedLoss` (same keywords; ``stats`` a
    :class:`ClassStats`, a preset name or a statistics file)."""
    module = _FUNCTIONAL[_functional_slot(stats, backend, validate_labels, **options)][1]
    return module(logits, labels, weight, avg_factor=avg_factor)


_FUNCTIONAL = {}  # slot -> (stats, module)
_SLOTS = {}  # (statistics, options) -> slot


@torch.compiler.assume_constant_result
def _functional_slot(stats, backend, validate_labels, **options):
    """The slot of the one module per (statistics, options): preset names and file paths key by
    name, so repeated calls neither reload the file nor copy the class table to the device again.
    A constant to torch.compile: building the module (numpy, file reads) never enters a graph."""
    config = _as_config(options)
    key = (stats if isinstance(stats, str) else id(stats), backend, validate_labels, config)
    slot = _SLOTS.get(key)
    if slot is None or not isinstance(stats, str) and _FUNCTIONAL[slot][0] is not stats:
        options = {k: v for k, v in dataclasses.asdict(config).items() if k in _DB_FIELDS}
        module = DistributionBalancedLoss(_as_stats(stats), backend=backend, validate_labels=validate_labels, **options)
        if len(_FUNCTIONAL) > 32:
            _FUNCTIONAL.clear()
            _SLOTS.clear()
        slot = _SLOTS[key] = max(_FUNCTIONAL, default=-1) + 1
        _FUNCTIONAL[slot] = (stats, module)
    return slot


class ResampleLoss(DistributionBalancedLoss):
    """Drop-in for the authors' ``ResampleLoss`` (mllt/models/losses/resample_loss.py).

    Takes their constructor keywords, so ``ResampleLoss(**cfg)`` from their configs works, and
    returns what their training loop gets after its ``.mean()``. Differences, by design:
      * statistics from ``freq_file`` are read without executing code; ``class_freq`` /
        ``neg_class_freq`` or ``stats`` may be given instead;
      * the caller's logits are never modified (theirs add the NTR bias in place);
      * ``reweight_func=None`` with ``logit_reg`` works (theirs crashes);
      * ``weight`` multiplies the element-wise loss (theirs ignores it); ``avg_factor`` divides the
        summed loss for ``reduction="mean"`` (theirs ignores it);
      * ``partial=True`` is accepted: -1 labels are always treated as unknown here.
    """

    def __init__(self, use_sigmoid: bool = True, partial: bool = False, loss_weight: float = 1.0,
                 reduction: str = "mean", reweight_func: Optional[str] = None, weight_norm: Optional[str] = None,
                 focal: Optional[dict] = dict(focal=True, balance_param=2.0, gamma=2),
                 map_param: Optional[dict] = dict(alpha=10.0, beta=0.2, gamma=0.1),
                 CB_loss: Optional[dict] = dict(CB_beta=0.9, CB_mode="average_w"),
                 logit_reg: Optional[dict] = dict(neg_scale=5.0, init_bias=0.1),
                 freq_file: Optional[str] = None, *, class_freq=None, neg_class_freq=None,
                 stats: Optional[ClassStats] = None, backend: str = "auto", **kwargs) -> None:
        if not use_sigmoid:
            raise NotImplementedError("ResampleLoss(use_sigmoid=False) (softmax cross-entropy) is not part of the "
                                      "Distribution-Balanced loss; use torch.nn.CrossEntropyLoss")
        if kwargs:
            raise TypeError(f"ResampleLoss got unknown keyword(s) {sorted(kwargs)}")
        given = [x is not None for x in (freq_file, class_freq, stats)]
        if sum(given) != 1:
            raise ValueError("give exactly one of freq_file=, class_freq= (with neg_class_freq=) or stats=")
        if stats is None:
            stats = (ClassStats.load(freq_file) if freq_file is not None
                     else ClassStats(class_freq, neg_class_freq))
        focal = dict(focal or {})
        map_param = dict(map_param or {})
        CB_loss = dict(CB_loss or {})
        logit_reg = dict(logit_reg or {})
        options = dict(
            reweight=reweight_func, weight_norm=weight_norm, focal=bool(focal.get("focal", True)),
            gamma=float(focal.get("gamma", 2.0)), balance_param=float(focal.get("balance_param", 2.0)),
            logit_reg=bool(logit_reg), neg_scale=float(logit_reg.get("neg_scale", 1.0)),
            init_bias=float(logit_reg.get("init_bias", 0.0)),
            map_alpha=float(map_param.get("alpha", 10.0)), map_beta=float(map_param.get("beta", 0.2)),
            map_gamma=float(map_param.get("gamma", 0.1)), cb_beta=float(CB_loss.get("CB_beta", 0.9)),
            cb_mode=CB_loss.get("CB_mode", "average_w"), loss_weight=float(loss_weight), reduction=reduction,
        )
        super().__init__(stats, backend=backend, **options)
        self.partial = partial

    def forward(self, cls_score: torch.Tensor, label: torch.Tensor, weight: Optional[torch.Tensor] = None,
                avg_factor: Optional[Union[float, torch.Tensor]] = None, reduction_override: Optional[str] = None,
                **kwargs) -> torch.Tensor:
        if reduction_override is not None and reduction_override not in ("none", "mean", "sum"):
            raise ValueError(f"reduction_override={reduction_override!r}; use 'none', 'mean' or 'sum'")
        return super().forward(cls_score, label, weight, avg_factor, reduction_override)


__all__ = ["DistributionBalancedLoss", "distribution_balanced_loss", "ResampleLoss", "PRESET_CONFIGS"]
