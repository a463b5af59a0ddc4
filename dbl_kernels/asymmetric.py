"""Public API of the Asymmetric Loss (ASL; Ridnik et al., ICCV 2021) in the same fused pass:
``AsymmetricLoss`` (Alibaba-MIIL's class), ``AsymmetricLossMultiLabel`` (timm's) and
``asymmetric_loss``. One implementation behind the names; the element loss is
``reference.asymmetric_focal``.

Per element, with p = sigmoid(x) and p_m = max(p - clip, 0): positives -pw (1 - p)^gamma_pos log p,
negatives -p_m^gamma_neg log(1 - p_m); soft labels follow ASL's own formula. Labels of -1 are
unknown (no loss, no gradient), as everywhere in this package.

Deliberate differences from the originals, both documented in the README:
  * ``eps`` is accepted and not used: the logs are exact. Their clamp of the probabilities at eps
    (1e-8) only changes logits beyond about 18 in magnitude, where it caps the loss of a badly wrong
    positive at 18.4 and stops its gradient; here that loss keeps growing linearly and its gradient
    tends to -1 (bounded).
  * ``disable_torch_grad_focal_loss=True`` holds the focusing weight constant in the gradient, as
    timm and Alibaba-MIIL's ``AsymmetricLossOptimized`` do. Alibaba-MIIL's ``AsymmetricLoss``
    defaults it to True but has the switch commented out, so its gradient flows through the
    weight: that is this package's default (False), and their numbers.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

from ._spec import class_params, kernel_spec
from .loss import _FusedLoss
from .reference import LossConfig

ASL_REDUCTIONS = ("sum", "mean", "batchmean", "none", "per_class")


def _asl_config(gamma_neg, gamma_pos, clip, disable_torch_grad_focal_loss, smoothing, reduction):
    if reduction not in ASL_REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not supported; choose one of {list(ASL_REDUCTIONS)}")
    return LossConfig(reweight=None, logit_reg=False, focal=True, gamma=gamma_pos, gamma_neg=gamma_neg,
                      clip=0.0 if clip is None else clip, smoothing=smoothing, balance_param=1.0,
                      focus_grad=not disable_torch_grad_focal_loss, reduction=reduction)


def _as_vector(name, value):
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=torch.float64)
    if t.dim() > 1:
        raise ValueError(f"{name} must be a number or a per-class vector, got shape {tuple(t.shape)}")
    return t.clone()


class AsymmetricLoss(_FusedLoss):
    """Asymmetric Loss (Ridnik et al., ICCV 2021), a drop-in for Alibaba-MIIL's ``AsymmetricLoss``.

    Same keywords and defaults (``gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-8``; see the module
    docstring for ``eps`` and ``disable_torch_grad_focal_loss``), plus ``reduction`` (default
    ``"sum"``, as theirs returns the summed loss; also ``"mean"`` over the known entries,
    ``"batchmean"`` (the sum / N), ``"none"``, ``"per_class"``), a per-class or broadcastable
    ``weight`` applied after the focusing, ``pos_weight`` on the positive log term, ``smoothing``
    (targets moved towards 0.5), ``backend`` and ``validate_labels``.
    """

    def __init__(self, gamma_neg: float = 4, gamma_pos: float = 1, clip: Optional[float] = 0.05, eps: float = 1e-8,
                 disable_torch_grad_focal_loss: bool = False, *, smoothing: float = 0.0, reduction: str = "sum",
                 weight: Optional[torch.Tensor] = None, pos_weight: Optional[Union[torch.Tensor, float]] = None,
                 backend: str = "auto", validate_labels: Optional[bool] = None) -> None:
        super().__init__(_asl_config(gamma_neg, gamma_pos, clip, disable_torch_grad_focal_loss, smoothing, reduction),
                         backend, validate_labels)
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        self.eps = eps  # accepted for compatibility; the logs are exact (module docstring)
        if weight is not None and not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a torch.Tensor or None, got {type(weight).__name__}")
        self.register_buffer("weight", None if weight is None else weight.detach().clone(), persistent=False)
        self.register_buffer("pos_weight", _as_vector("pos_weight", pos_weight), persistent=False)
        self._tables = {}

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, weight: Optional[torch.Tensor] = None,
                avg_factor: Optional[Union[float, torch.Tensor]] = None, reduction: Optional[str] = None) -> torch.Tensor:
        """The loss of N x C ``logits`` against ``labels`` (1, 0, -1 unknown, or soft in [0, 1]);
        ``weight`` (per call) multiplies the module's ``weight``."""
        if reduction is not None and reduction not in ASL_REDUCTIONS:
            raise ValueError(f"reduction={reduction!r} is not supported; choose one of {list(ASL_REDUCTIONS)}")
        own = self._buffers["weight"]
        if own is not None:
            own = own.to(logits.device)
            weight = own if weight is None else weight * own
        return super().forward(logits, labels, weight, avg_factor, reduction)

    def _class_table(self, num_classes=None):
        """A neutral class table per number of classes (ASL uses no class statistics)."""
        entry = self._tables.get(num_classes)
        if entry is None:
            table = class_params(None, None, self.config, num_classes)
            entry = self._tables[num_classes] = (torch.from_numpy(table), kernel_spec(table, self.config))
        return entry

    def _reference_inputs(self):
        return None, None, self._buffers["pos_weight"]

    def extra_repr(self):
        g_pos, g_neg = self.config.gammas
        return (f"gamma_neg={g_neg}, gamma_pos={g_pos}, clip={self.config.clip}, "
                f"disable_torch_grad_focal_loss={not self.config.focus_grad}, smoothing={self.config.smoothing}, "
                f"reduction={self.config.reduction!r}, backend={self.backend!r}")


class AsymmetricLossMultiLabel(AsymmetricLoss):
    """A drop-in for timm's ``AsymmetricLossMultiLabel`` (timm 1.0): its keywords and defaults,
    ``smoothing=0.0`` and ``reduction="batchmean"`` (sum over classes, mean over the batch) among
    them; ``weight`` is per class (after the focusing), ``pos_weight`` on the positive log term.
    The same implementation as :class:`AsymmetricLoss`."""

    def __init__(self, gamma_neg: float = 4, gamma_pos: float = 1, clip: Optional[float] = 0.05, eps: float = 1e-8,
                 disable_torch_grad_focal_loss: bool = False, smoothing: float = 0.0, reduction: str = "batchmean",
                 weight: Optional[torch.Tensor] = None, pos_weight: Optional[Union[torch.Tensor, float]] = None, *,
                 backend: str = "auto", validate_labels: Optional[bool] = None) -> None:
        super().__init__(gamma_neg, gamma_pos, clip, eps, disable_torch_grad_focal_loss, smoothing=smoothing,
                         reduction=reduction, weight=weight, pos_weight=pos_weight, backend=backend,
                         validate_labels=validate_labels)


def asymmetric_loss(logits: torch.Tensor, labels: torch.Tensor, *, gamma_neg: float = 4, gamma_pos: float = 1,
                    clip: Optional[float] = 0.05, eps: float = 1e-8, disable_torch_grad_focal_loss: bool = False,
                    smoothing: float = 0.0, reduction: str = "sum", weight: Optional[torch.Tensor] = None,
                    pos_weight: Optional[Union[torch.Tensor, float]] = None, backend: str = "auto",
                    validate_labels: Optional[bool] = None) -> torch.Tensor:
    """Functional form of :class:`AsymmetricLoss` (same keywords; ``weight`` per call)."""
    pos_key = None if pos_weight is None else tuple(np.atleast_1d(_as_vector("pos_weight", pos_weight).numpy()).tolist())
    module = _FUNCTIONAL[_functional_key(gamma_neg, gamma_pos, clip, eps, disable_torch_grad_focal_loss, smoothing,
                                         reduction, pos_key, backend, validate_labels)]
    return module(logits, labels, weight)


_FUNCTIONAL = {}


@torch.compiler.assume_constant_result
def _functional_key(*key):
    """The key of the cached module for these options, building it on first use (a constant to
    torch.compile, like the DB functional form: the module is never built inside a graph)."""
    if key not in _FUNCTIONAL:
        gamma_neg, gamma_pos, clip, eps, disable, smoothing, reduction, pos_weight, backend, validate = key
        if len(_FUNCTIONAL) > 32:
            _FUNCTIONAL.clear()
        _FUNCTIONAL[key] = AsymmetricLoss(gamma_neg, gamma_pos, clip, eps, disable, smoothing=smoothing,
                                          reduction=reduction, pos_weight=None if pos_weight is None else list(pos_weight),
                                          backend=backend, validate_labels=validate)
    return key


__all__ = ["AsymmetricLoss", "AsymmetricLossMultiLabel", "asymmetric_loss"]
