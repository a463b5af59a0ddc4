"""The label-value check every entry point shares (the losses, ``ClassStats.from_labels``):
integers in {0, 1, -1}, floats in [0, 1] or -1 (unknown). Imports only torch."""
from __future__ import annotations

from typing import Callable, Optional

import torch


def any_between(labels: torch.Tensor) -> bool:
    """Whether any float label lies strictly in (-1, 0) (torch: three passes)."""
    return bool(((labels < 0) & (labels > -1)).any())


def check_label_values(labels: torch.Tensor, fast: Optional[Callable[[torch.Tensor], Optional[int]]] = None,
                       name: str = "labels") -> bool:
    """Raise ValueError on labels outside {0, 1, -1} (integers) or [0, 1] u {-1} (floats); return
    whether any -1 is present, which saves the kernels a counting pass for the mean.

    ``fast(labels)``: a one-pass check handed down by a caller that has one, returning 0 (valid, no
    -1), 1 (valid, some -1), 2 (invalid) or None (not applicable); torch finds what is wrong."""
    if labels.dtype == torch.bool or labels.numel() == 0:
        return False
    code = fast(labels) if fast is not None else None
    if code is not None and code < 2:
        return code == 1
    lo, hi = torch.aminmax(labels)
    lo, hi = float(lo), float(hi)
    if not labels.dtype.is_floating_point:
        if lo < -1 or hi > 1:
            raise ValueError(f"integer {name} must be 0, 1 or -1 (unknown); found values in [{lo:g}, {hi:g}]")
        return lo < 0
    if not (lo >= -1 and hi <= 1):  # also catches NaN
        raise ValueError(f"float {name} must lie in [0, 1] or be -1 (unknown); found values in [{lo:g}, {hi:g}]")
    if lo < 0 and any_between(labels):
        raise ValueError(f"float {name} must lie in [0, 1] or be -1 (unknown); found negative values other than -1")
    return lo < 0
