"""A fused classifier + loss for large label spaces: the Distribution-Balanced loss of
``hidden @ weight.T + bias`` without ever holding the N x C logits or their gradient.

The classes are taken in chunks: a chunk's logits are computed, its loss and gradient evaluated,
and its share of the gradients of ``hidden``, ``weight`` and ``bias`` accumulated; then the chunk's
buffers are dropped. Everything the loss needs across all classes depends on the labels only
(the row statistics of the re-weighting, the row and batch maxima of its normalisation, the
mean's count) and is computed first, from the labels alone. Peak extra memory is
O(N * chunk + N * H) instead of O(N * C); the gradients are finished in the forward and a plain
``loss.backward()`` only hands them on (no second pass over the classes). CSR labels reach an op
that reads CSR (cpu, triton, cuda) as each chunk's CSR slice, with no dense label tile.

Default chunk size: the classes whose per-chunk buffers (logits, gradient and the dense label tile,
4 bytes each in fp32, plus slack: 16 bytes per element) fit in ``CHUNK_BUDGET_BYTES`` (64 MiB), at
least 256 and a multiple of 256: 8,192 classes for N = 512 (measured peak extra memory at N = 512,
C = 100,000: 57 MiB, against 390 MiB for logits + loss; benchmarks/largec.py). Larger chunks keep
the matmuls efficient: at 2,048 classes per chunk the classifier took 26% longer than at 8,192.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn

from . import _rows, _sparse, backends, ops, reference
from ._spec import REDUCTIONS, class_params, kernel_spec
from .loss import StatsLike, _as_config, _as_stats

CHUNK_BUDGET_BYTES = 64 << 20
_BYTES_PER_ELEMENT = 16
_REDUCTIONS = ("mean", "sum", "batchmean", "per_class")


def default_chunk_size(num_rows: int, num_classes: int) -> int:
    chunk = CHUNK_BUDGET_BYTES // (_BYTES_PER_ELEMENT * max(num_rows, 1))
    return int(min(num_classes, max(256, chunk // 256 * 256)))


def _chunk_loss(logits, labels, class_freq, train_num, cfg, rows):
    """The summed (or per-column) loss of one chunk and its gradient w.r.t. the chunk's logits, by
    the reference."""
    z = logits.detach().requires_grad_()
    with torch.enable_grad():
        loss = reference.distribution_balanced_loss(z, labels, class_freq, train_num, cfg, rows=rows)
        (grad,) = torch.autograd.grad(loss.sum(), z)
    return loss.detach(), grad


class _FusedChunks:
    """The chunks through a fused op that takes row statistics (contract v2 ``row_stats``): each
    call gets the chunk's slice of the full class table, whose w_max spans all classes, and the
    row statistics and batch maximum over all classes."""

    def __init__(self, op, class_freq, train_num, cfg, rows, dtype, device, scale, csr_ok):
        table = class_params(class_freq, train_num, cfg)  # numpy: built on the host, no device read
        self.op, self.spec, self.csr_ok = op, kernel_spec(table, cfg), csr_ok
        self.params = torch.from_numpy(table).to(device=device, dtype=dtype)
        self.row_stats, inv_batch = _rows.kernel_row_stats(rows, cfg, dtype)
        one = torch.ones((), dtype=dtype, device=device)
        # aux[0]: the reduction scale, applied by the op to the loss and the gradient (no extra pass)
        self.aux = torch.stack([torch.as_tensor(scale, dtype=dtype, device=device).reshape(()),
                                one if inv_batch is None else inv_batch.to(dtype).reshape(())])
        self.reduction = REDUCTIONS[cfg.reduction]

    def __call__(self, logits, labels, c0, c1):
        """``labels``: the ChunkedLabels; CSR ones reach an op that reads CSR as the chunk's CSR
        slice (no dense tile)."""
        params = self.params[:, c0:c1].contiguous()
        csr = None
        if labels.csr and self.csr_ok:
            part = _sparse.column_slice(labels.labels, c0, c1)
            tile, csr = part.values(), (part.crow_indices(), part.col_indices())
        else:
            tile = labels.chunk(c0, c1)
        args = ops.op_args(logits.detach(), tile, None, params, self.aux, self.spec, True, self.reduction,
                           row_stats=self.row_stats, csr=csr)
        return self.op(*args)


def _fused_chunks(backend, device, class_freq, train_num, cfg, rows, dtype, scale):
    """A _FusedChunks where the resolved backend's op has what this loss needs, else None (the
    reference per chunk)."""
    name = backends.resolve(backend, device.type)
    if name == "reference":
        return None
    op = backends.fused_op(name)
    need = {"row_stats"} | ({"asymmetric"} if cfg.asymmetric else set())
    need |= {"per_class"} if cfg.reduction == "per_class" else set()
    features = ops.features(op, device.type)
    if not need <= features:
        return None
    return _FusedChunks(op, class_freq, train_num, cfg, rows, dtype, device, scale, "csr" in features)


class _ChunkedLinearLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, plan):
        labels, host_freq, train_num, cfg, chunk_size, backend = plan
        n_rows, num_classes = hidden.shape[0], weight.shape[0]
        chunks = [(c0, min(c0 + chunk_size, num_classes)) for c0 in range(0, num_classes, chunk_size)]
        dtype = reference.compute_dtype(hidden)  # the loss math; the matmuls follow autocast
        labels = _rows.ChunkedLabels(labels, dtype)
        class_freq = torch.from_numpy(host_freq).to(device=hidden.device, dtype=torch.float64)
        sum_cfg = dataclasses.replace(cfg, reduction="per_class" if cfg.reduction == "per_class" else "sum")
        *rows, known = _rows.row_terms(labels, chunks, class_freq, train_num, cfg)
        if cfg.reduction == "mean":  # a device tensor: no host sync
            scale = 1.0 / torch.as_tensor(known, device=hidden.device).clamp(min=1).to(dtype)
        else:
            scale = 1.0 / max(n_rows, 1) if cfg.reduction == "batchmean" else 1.0
        fused = _fused_chunks(backend, hidden.device, host_freq, train_num, sum_cfg, rows, dtype, scale)
        if fused is not None:
            scale = 1.0  # the op scales
        grad_hidden = torch.zeros(hidden.shape, dtype=dtype, device=hidden.device) if ctx.needs_input_grad[0] else None
        grad_weight = torch.empty_like(weight) if ctx.needs_input_grad[1] else None
        grad_bias = torch.empty_like(bias) if bias is not None and ctx.needs_input_grad[2] else None
        total = hidden.new_zeros((num_classes,) if cfg.reduction == "per_class" else (), dtype=dtype)
        for c0, c1 in chunks:
            logits = (hidden @ weight[c0:c1].t() if bias is None
                      else torch.addmm(bias[c0:c1], hidden, weight[c0:c1].t()))
            if fused is not None:
                loss, grad = fused(logits, labels, c0, c1)
            else:
                loss, grad = _chunk_loss(logits, labels.chunk(c0, c1), class_freq[c0:c1], train_num, sum_cfg, rows)
            if cfg.reduction == "per_class":
                total[c0:c1] = loss
            else:
                total = total + loss  # chunk order: deterministic
            if fused is None:
                grad = grad * scale
            # in place where the dtypes allow (no N x H / chunk x H temporaries), else cast
            in_place = not torch.is_autocast_enabled(grad.device.type) and grad.dtype == hidden.dtype == weight.dtype
            if grad_hidden is not None:  # accumulated in the compute dtype, in chunk order
                if in_place and grad_hidden.dtype == grad.dtype:
                    grad_hidden.addmm_(grad, weight[c0:c1])
                else:
                    grad_hidden += grad.to(weight.dtype) @ weight[c0:c1]
            if grad_weight is not None:
                if in_place:
                    torch.mm(grad.t(), hidden, out=grad_weight[c0:c1])
                else:
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
    backends.check_backend_name(backend)
    class_freq = stats.class_freq.copy()
    return _ChunkedLinearLoss.apply(hidden, weight, bias,
                                    (labels, class_freq, stats.train_num, cfg, chunk_size, backend))


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
