"""The label-value check every entry point shares (the losses, ``ClassStats.from_labels``):
integers in {0, 1, -1}, floats in [0, 1] or -1 (unknown). Imports only torch."""
from __future__ import annotations

from typing import Callable, Optional

import torch


def any_between(labels: torch.Tensor) -> bool:
    """Whether any float label lies strictly in (-1, 0) (torch: three passes)."""
    return bool(((labels < 0) & (labels > -1)).any())


def check_label_values(labels: torch.Tensor, between: Optional[Callable[[torch.Tensor], bool]] = None,
                       name: str = "labels") -> bool:
    """Raise ValueError on labels outside {0, 1, -1} (integers) or [0, 1] u {-1} (floats); return
    whether any -1 is present, which saves the kernels a counting pass for the mean. ``between``: a
    faster scan for values in (-1, 0), handed down by a caller that has one."""
    if labels.dtype == torch.bool or labels.numel() == 0:
        return False
    lo, hi = torch.aminmax(labels)
    lo, hi = float(lo), float(hi)
    if not labels.dtype.is_floating_point:
        if lo < -1 or hi > 1:
            raise ValueError(f"integer {name} must be 0, 1 or -1 (unknown); found values in [{lo:g}, {hi:g}]")
        return lo < 0
    if not (lo >= -1 and hi <= 1):  # also catches NaN
        raise ValueError(f"float {name} must lie in [0, 1] or be -1 (unknown); found values in [{lo:g}, {hi:g}]")
    if lo < 0 and (between or any_between)(labels):
        raise ValueError(f"float {name} must lie in [0, 1] or be -1 (unknown); found negative values other than -1")
    return lo < 0
