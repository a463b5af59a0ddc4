"""A fused classifier + loss for large label spaces: the Distribution-Balanced loss of
``hidden @ weight.T + bias`` without ever holding the N x C logits or their gradient.

The classes are taken in chunks: a chunk's logits are computed, its loss and gradient evaluated,
and its share of the gradients of ``hidden``, ``weight`` and ``bias`` accumulated; then the chunk's
buffers are dropped. Everything the loss needs across all classes depends on the labels only
(the row statistics of the re-weighting, the row and batch maxima of its normalisation, the
mean's count) and is computed first, from the labels alone. Peak extra memory is
O(N * chunk + N * H) instead of O(N * C); the gradients are finished in the forward and a plain
``loss.backward()`` only hands them on (no second pass over the classes).

Default chunk size: the classes whose per-chunk buffers (logits, gradient, labels and the loss's
temporaries, about 32 bytes per element) fit in ``CHUNK_BUDGET_BYTES`` (64 MiB), at least 256 and a
multiple of 256: 4,096 classes for N = 512.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn

from . import _sparse, reference
from .loss import StatsLike, _as_config, _as_stats

CHUNK_BUDGET_BYTES = 64 << 20
_BYTES_PER_ELEMENT = 32
_REDUCTIONS = ("mean", "sum", "batchmean", "per_class")


def default_chunk_size(num_rows: int, num_classes: int) -> int:
    chunk = CHUNK_BUDGET_BYTES // (_BYTES_PER_ELEMENT * max(num_rows, 1))
    return int(min(num_classes, max(256, chunk // 256 * 256)))


class _Labels:
    """The labels (dense N x C or CSR) seen one column chunk at a time, as dense compute-dtype tiles."""

    def __init__(self, labels, dtype):
        self.labels, self.dtype, self.csr = labels, dtype, _sparse.is_csr(labels)

    def chunk(self, c0, c1):
        if self.csr:
            return _sparse.to_dense(_sparse.column_slice(self.labels, c0, c1), self.dtype)
        return self.labels[:, c0:c1].to(self.dtype)


def _row_terms(labels, chunks, class_freq, train_num, cfg):
    """(stats, row_max, batch_max, known count) over all classes, from the labels alone."""
    stats = None
    if reference.needs_row_statistics(cfg):
        total = count = None
        for c0, c1 in chunks:
            a, b = reference.row_statistics(labels.chunk(c0, c1), class_freq[c0:c1], cfg)
            max_mode = cfg.reweight == "CB" and cfg.cb_mode == "min_n"
            total = a if total is None else (torch.maximum(total, a) if max_mode else total + a)
            count = b if count is None else count + b
        stats = (total, count)
    row_max = batch_max = None
    if cfg.weight_norm is not None:
        for c0, c1 in chunks:
            w = reference.reweight(labels.chunk(c0, c1), class_freq[c0:c1], train_num, cfg, stats)
            m = w.amax(dim=1, keepdim=True)
            row_max = m if row_max is None else torch.maximum(row_max, m)
        batch_max = row_max.amax() if row_max.numel() else None
    known = sum(reference.known(labels.chunk(c0, c1)).sum() for c0, c1 in chunks)
    return stats, row_max, batch_max, known


def _chunk_loss(logits, labels, class_freq, train_num, cfg, rows):
    """The summed (or per-column) loss of one chunk and its gradient w.r.t. the chunk's logits."""
    z = logits.detach().requires_grad_()
    with torch.enable_grad():
        loss = reference.distribution_balanced_loss(z, labels, class_freq, train_num, cfg, rows=rows)
        (grad,) = torch.autograd.grad(loss.sum(), z)
    return loss.detach(), grad


class _ChunkedLinearLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, plan):
        labels, class_freq, train_num, cfg, chunk_size = plan
        n_rows, num_classes = hidden.shape[0], weight.shape[0]
        chunks = [(c0, min(c0 + chunk_size, num_classes)) for c0 in range(0, num_classes, chunk_size)]
        dtype = reference.compute_dtype(hidden)  # the loss math; the matmuls follow autocast
        labels = _Labels(labels, dtype)
        class_freq = class_freq.to(device=hidden.device, dtype=torch.float64)
        sum_cfg = dataclasses.replace(cfg, reduction="per_class" if cfg.reduction == "per_class" else "sum")
        *rows, known = _row_terms(labels, chunks, class_freq, train_num, cfg)
        if cfg.reduction == "mean":  # a device tensor: no host sync
            scale = 1.0 / torch.as_tensor(known, device=hidden.device).clamp(min=1).to(dtype)
        else:
            scale = 1.0 / max(n_rows, 1) if cfg.reduction == "batchmean" else 1.0
        grad_hidden = torch.zeros(hidden.shape, dtype=dtype, device=hidden.device) if ctx.needs_input_grad[0] else None
        grad_weight = torch.empty_like(weight) if ctx.needs_input_grad[1] else None
        grad_bias = torch.empty_like(bias) if bias is not None and ctx.needs_input_grad[2] else None
        total = hidden.new_zeros((num_classes,) if cfg.reduction == "per_class" else (), dtype=dtype)
        for c0, c1 in chunks:
            logits = hidden @ weight[c0:c1].t()
            if bias is not None:
                logits = logits + bias[c0:c1]
            loss, grad = _chunk_loss(logits, labels.chunk(c0, c1), class_freq[c0:c1], train_num, sum_cfg, rows)
            if cfg.reduction == "per_class":
                total[c0:c1] = loss
            else:
                total = total + loss  # chunk order: deterministic
            grad = grad * scale
            if grad_hidden is not None:  # accumulated in the compute dtype, in chunk order
                grad_hidden += grad.to(weight.dtype) @ weight[c0:c1]
            if grad_weight is not None:
                grad_weight[c0:c1] = grad.t().to(hidden.dtype) @ hidden
            if grad_bias is not None:
                grad_bias[c0:c1] = grad.sum(dim=0)
        ctx.grads = [None if grad_hidden is None else grad_hidden.to(hidden.dtype), grad_weight, grad_bias]
        ctx.per_class = cfg.reduction == "per_class"
        return total * scale

    @staticmethod
    def backward(ctx, grad_output):
        if torch.is_grad_enabled():
            raise RuntimeError("linear_distribution_balanced_loss gives first derivatives only (backward with "
                               "create_graph=True asks for second ones)")
        if ctx.per_class:
            raise RuntimeError("reduction='per_class' of the fused classifier is for logging: back-propagate a "
                               "scalar reduction (its .sum() equals reduction='sum')")
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise RuntimeError("linear_distribution_balanced_loss: this loss was already back-propagated; "
                               "recompute it to back-propagate again")
        if not (grad_output.device.type == "cpu" and grad_output.item() == 1.0):
            grads = [None if g is None else g.mul_(grad_output.to(g.dtype)) for g in grads]
        return grads[0], grads[1], grads[2], None


def linear_distribution_balanced_loss(hidden: torch.Tensor, weight: torch.Tensor, labels, stats: StatsLike,
                                      bias: Optional[torch.Tensor] = None, *, chunk_size: Optional[int] = None,
                                      backend: str = "auto", **options) -> torch.Tensor:
    """The Distribution-Balanced loss of ``hidden @ weight.T + bias`` (``weight`` C x H, as in
    ``nn.Linear``) against ``labels`` (dense N x C or a CSR tensor, see README), computed chunk by
    chunk of classes; the loss options are those of :class:`DistributionBalancedLoss`."""
    stats = _as_stats(stats)
    cfg = _as_config(options)
    if cfg.reduction not in _REDUCTIONS:
        raise ValueError(f"reduction={cfg.reduction!r} is not supported by the fused classifier (it never holds the "
                         f"N x C losses); choose one of {list(_REDUCTIONS)}")
    _check(hidden, weight, bias, labels, stats)
    n_rows, num_classes = hidden.shape[0], weight.shape[0]
    if chunk_size is None:
        chunk_size = default_chunk_size(n_rows, num_classes)
    if not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"chunk_size must be a positive number of classes, got {chunk_size!r}")
    class_freq = torch.from_numpy(stats.class_freq.copy())
    return _ChunkedLinearLoss.apply(hidden, weight, bias, (labels, class_freq, stats.train_num, cfg, chunk_size))


def _check(hidden, weight, bias, labels, stats):
    for name, t in (("hidden", hidden), ("weight", weight)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{name} must be a 2-D tensor, got {getattr(t, 'shape', type(t).__name__)}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden has {hidden.shape[1]} features but weight expects {weight.shape[1]} (weight is C x H)")
    if weight.shape[0] != stats.num_classes:
        raise ValueError(f"weight has C={weight.shape[0]} rows but the class statistics have {stats.num_classes} classes")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (hidden.shape[0], weight.shape[0]):
        raise ValueError(f"labels must be an N x C tensor of shape {(hidden.shape[0], weight.shape[0])}, got "
                         f"{tuple(getattr(labels, 'shape', ()))}")
    if labels.device != hidden.device:
        raise ValueError(f"labels are on {labels.device} but hidden on {hidden.device}; move them to one device")
    if _sparse.is_csr(labels):
        _sparse.check_csr(labels, labels.shape, validate=labels.device.type == "cpu")


class LinearDistributionBalancedLoss(nn.Module):
    """A classifier layer (``weight`` C x H and ``bias``, initialised as ``nn.Linear``) fused with the
    Distribution-Balanced loss: ``forward(hidden, labels)`` returns the loss, never the N x C logits.
    Use ``logits(hidden)`` for inference."""

    def __init__(self, in_features: int, stats: StatsLike, bias: bool = True, *, chunk_size: Optional[int] = None,
                 backend: str = "auto", device=None, dtype=None, **options) -> None:
        super().__init__()
        self.stats = _as_stats(stats)
        self.options = dict(options)
        _as_config(self.options)  # validated now, not at the first call
        self.chunk_size, self.backend = chunk_size, backend
        layer = nn.Linear(in_features, self.stats.num_classes, bias=bias, device=device, dtype=dtype)
        self.weight, self.bias = layer.weight, layer.bias

    def forward(self, hidden: torch.Tensor, labels) -> torch.Tensor:
        return linear_distribution_balanced_loss(hidden, self.weight, labels, self.stats, self.bias,
                                                 chunk_size=self.chunk_size, backend=self.backend, **self.options)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(hidden, self.weight, self.bias)

    def extra_repr(self):
        return (f"in_features={self.weight.shape[1]}, num_classes={self.weight.shape[0]}, "
                f"bias={self.bias is not None}, chunk_size={self.chunk_size}")


__all__ = ["linear_distribution_balanced_loss", "LinearDistributionBalancedLoss", "default_chunk_size"]
