"""Pure-PyTorch reference of the Distribution-Balanced loss: the executable spec.

One small function per term of Wu et al. (ECCV 2020), in the order the loss applies them:

    w   = reweight(y)                          re-balancing weight          (Sec. 3.1)
    w   = normalize(w)                         optional weight_norm
    z', w' = negative_tolerant(z, w, y)        NTR logit shift + neg scale  (Sec. 3.2)
    l   = bce(z', y)                           stable BCE-with-logits
    L   = balance * (1 - p_t)^gamma * w' * l   focal modulation, p_t = exp(-l)

The kernels (C++/CUDA and Triton) mirror these names and must match this module on every
configuration. Everything runs on any device, differentiates with autograd and works in fp64.

Conventions:
  * ``y == -1`` marks an unknown label (partial labels): no loss, no gradient, left out of the row
    sums and of the mean's count.  Soft labels in [0, 1] go through the same formulas.
  * Row statistics treat ``max(y, 0)`` as the positive mass, so ignored entries add nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._tracing import transformed

REWEIGHTS = ("rebalance", "CB", "inv", "sqrt_inv", None)
CB_MODES = ("by_class", "average_w", "average_n", "min_n")
WEIGHT_NORMS = (None, "by_instance", "by_batch")
NTR_BIASES = ("official", "paper")
# batchmean: the sum over the batch divided by N (timm's ASL default); per_class: the C-vector of
# column sums, so head / medium / tail losses can be logged and .sum().backward() still trains.
REDUCTIONS = ("mean", "sum", "none", "batchmean", "per_class")


@dataclass(frozen=True)
class LossConfig:
    """Every option of the loss, validated once. Defaults are the authors' COCO-MLT config."""

    reweight: str | None = "rebalance"
    weight_norm: str | None = None
    focal: bool = True
    gamma: float = 2.0
    balance_param: float = 2.0
    logit_reg: bool = True
    neg_scale: float = 2.0
    init_bias: float = 0.05
    ntr_bias: str = "official"
    map_alpha: float = 0.1
    map_beta: float = 10.0
    map_gamma: float = 0.2
    cb_beta: float = 0.9
    cb_mode: str = "average_w"
    loss_weight: float = 1.0
    reduction: str = "mean"
    # Asymmetric focusing (Ridnik et al., ICCV 2021): gamma_neg (None: = gamma) for negatives,
    # clip shifts negatives' probability down, smoothing moves targets towards 0.5 (timm's),
    # focus_grad=False treats the focusing weight as a constant in the gradient.
    gamma_neg: float | None = None
    clip: float = 0.0
    smoothing: float = 0.0
    focus_grad: bool = True

    @property
    def asymmetric(self) -> bool:
        """Whether the element loss is ASL's form (any asymmetric option set); else DB-focal's."""
        return self.gamma_neg is not None or self.clip > 0 or self.smoothing > 0 or not self.focus_grad

    @property
    def gammas(self) -> tuple[float, float]:
        """(gamma for positives, gamma for negatives) of the asymmetric form."""
        g = float(self.gamma) if self.focal else 0.0
        return g, g if self.gamma_neg is None else float(self.gamma_neg)

    def __post_init__(self):
        _choice("reweight", self.reweight, REWEIGHTS)
        _choice("weight_norm", self.weight_norm, WEIGHT_NORMS)
        _choice("ntr_bias", self.ntr_bias, NTR_BIASES)
        _choice("cb_mode", self.cb_mode, CB_MODES)
        _choice("reduction", self.reduction, REDUCTIONS)
        for name in ("focal", "logit_reg", "focus_grad"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("gamma", "balance_param", "neg_scale", "init_bias", "map_alpha", "map_beta", "map_gamma",
                     "cb_beta", "loss_weight", "clip", "smoothing") + (("gamma_neg",) if self.gamma_neg is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a real number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if self.gamma < 0:
            raise ValueError(f"gamma must be >= 0 (the focal exponent), got {self.gamma}")
        if self.gamma_neg is not None and self.gamma_neg < 0:
            raise ValueError(f"gamma_neg must be >= 0 (the negatives' focal exponent) or None, got {self.gamma_neg}")
        if not 0.0 <= self.clip < 1.0:
            raise ValueError(f"clip must lie in [0, 1) (a probability margin), got {self.clip}")
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"smoothing must lie in [0, 1), got {self.smoothing}")
        if self.neg_scale <= 0:
            raise ValueError(f"neg_scale must be > 0 (it divides the negatives' weight), got {self.neg_scale}")
        if not 0.0 < self.cb_beta < 1.0:
            raise ValueError(f"cb_beta must lie strictly between 0 and 1, got {self.cb_beta}")


def _choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {list(allowed)}")


# --------------------------------------------------------------------------------------------
# Class statistics as per-class tensors, computed in float64 from the counts and cast once to the
# compute dtype (in fp32, 1 - cb_beta alone is off by 1e-4 relative for cb_beta = 0.9999). The
# kernels' class table (_spec.class_params) is built from these same functions.
# --------------------------------------------------------------------------------------------
def class_balanced_weight(n, cb_beta):
    """Cui et al.'s effective-number weight (1 - beta) / (1 - beta^n), in float64."""
    n = n.to(torch.float64)
    return (1.0 - cb_beta) / (1.0 - torch.pow(torch.tensor(cb_beta, dtype=torch.float64, device=n.device), n))


def class_weight(class_freq, train_num, cfg: LossConfig):
    """The per-class weight of the class-vector re-weightings: T/n_j, sqrt(T/n_j), CB(n_j), else 1."""
    n = class_freq.to(torch.float64)
    if cfg.reweight == "inv":
        return train_num / n
    if cfg.reweight == "sqrt_inv":
        return (train_num / n).sqrt()
    if cfg.reweight == "CB":
        return class_balanced_weight(n, cfg.cb_beta)
    return torch.ones_like(n)


def ntr_bias(class_freq, train_num, cfg: LossConfig):
    """b_j = -log(T/n_j - 1) * kappa [/ lambda]: starts each logit at the class prior."""
    bias = -torch.log(train_num / class_freq.to(torch.float64) - 1.0) * cfg.init_bias
    return bias / cfg.neg_scale if cfg.ntr_bias == "official" else bias


# --------------------------------------------------------------------------------------------
# The terms.
# --------------------------------------------------------------------------------------------
def positives(labels):
    """Positive mass of each entry: the label, with unknown (-1) entries counted as 0."""
    return labels.clamp(min=0)


def known(labels):
    """1 where the label is known, 0 where it is -1."""
    return (labels != -1).to(labels.dtype)


def needs_row_statistics(cfg: LossConfig) -> bool:
    """Whether the weights depend on whole rows (rebalance, the CB row modes)."""
    return cfg.reweight == "rebalance" or (cfg.reweight == "CB" and cfg.cb_mode != "by_class")


def row_statistics(labels, class_freq, cfg: LossConfig):
    """The per-row sums the row-dependent weights need, as (A, B), each N x 1 (None for the class-
    vector weights): rebalance A = r_i = sum_j y+_ij / n_j; CB average_w A = sum_j y+ cb_j, average_n
    A = sum_j y+ n_j, min_n A = max over positives of cb_j (cb falls with n: the rarest positive's);
    B = sum_j y+. They span all C classes: a caller that works on a slice of the columns (the
    chunked classifier) computes them once and hands them to reweight()."""
    if not needs_row_statistics(cfg):
        return None
    pos = positives(labels)
    dtype = labels.dtype
    count = pos.sum(dim=1, keepdim=True)
    if cfg.reweight == "rebalance":
        table = 1.0 / class_freq.to(torch.float64)
    elif cfg.cb_mode == "average_n":
        table = class_freq
    else:
        table = class_balanced_weight(class_freq, cfg.cb_beta)
    table = table.to(dtype)
    if cfg.reweight == "CB" and cfg.cb_mode == "min_n":
        return torch.where(pos > 0, table.expand_as(labels), 0).amax(dim=1, keepdim=True), count
    return (pos * table).sum(dim=1, keepdim=True), count


def rebalance_weight(labels, class_freq, cfg: LossConfig, stats=None):
    """DB re-balancing: w_ij = alpha + sigmoid(beta * ((1/n_j) / r_i - gamma)), r_i = sum_j y_ij/n_j.

    (1/n_j)/r_i is the ratio of the class-level sampling probability to the instance-level one
    under class-aware re-sampling; a row with no positive has r_i = 0 and so weight alpha + 1.
    """
    inv_freq = (1.0 / class_freq.to(torch.float64)).to(labels.dtype)
    repeat_rate = (stats or row_statistics(labels, class_freq, cfg))[0]
    return torch.sigmoid(cfg.map_beta * (inv_freq / repeat_rate - cfg.map_gamma)) + cfg.map_alpha


def cb_weight(labels, class_freq, cfg: LossConfig, stats=None):
    """Class-balanced weight, per class or per row (averaged over the row's positives).

    A row without any positive has nothing to average over: it falls back to the per-class weight
    (the authors' code returns NaN there for average_w / average_n).
    """
    dtype = labels.dtype
    per_class = class_balanced_weight(class_freq, cfg.cb_beta).to(dtype).expand_as(labels)
    if cfg.cb_mode == "by_class":
        return per_class
    total, count = stats or row_statistics(labels, class_freq, cfg)
    if cfg.cb_mode == "average_w":
        row = total / count
    elif cfg.cb_mode == "average_n":
        row = class_balanced_weight(total / count, cfg.cb_beta).to(dtype)
    else:  # min_n: the rarest positive class sets the row's weight
        row = total
    return torch.where(count > 0, row.expand_as(labels), per_class)


def inverse_weight(labels, class_freq, train_num, cfg: LossConfig):
    """Re-weighting by inverse frequency T/n_j, or its square root."""
    return class_weight(class_freq, train_num, cfg).to(labels.dtype).expand_as(labels)


def reweight(labels, class_freq, train_num, cfg: LossConfig, stats=None):
    """The re-weighting; ``stats``: the row statistics when ``labels`` are a slice of the columns."""
    if cfg.reweight == "rebalance":
        return rebalance_weight(labels, class_freq, cfg, stats)
    if cfg.reweight == "CB":
        return cb_weight(labels, class_freq, cfg, stats)
    if cfg.reweight in ("inv", "sqrt_inv"):
        return inverse_weight(labels, class_freq, train_num, cfg)
    return torch.ones_like(labels)


def normalize(weight, cfg: LossConfig, row_max=None, batch_max=None):
    """Optional weight_norm: divide by the row max or the batch max (over all C columns; given by
    a caller that works on a slice of the columns)."""
    if cfg.weight_norm == "by_instance":
        return weight / (weight.amax(dim=1, keepdim=True) if row_max is None else row_max)
    if cfg.weight_norm == "by_batch" and weight.numel() > 0:
        return weight / (weight.amax() if batch_max is None else batch_max)
    return weight


def negative_tolerant(logits, weight, labels, bias, cfg: LossConfig):
    """NTR: shift logits by the class prior, scale negatives' logits by lambda, their weight by 1/lambda.

    The large gradient a confident negative would otherwise receive is tempered, so the many
    negatives of a tail class do not over-suppress it.
    """
    if not cfg.logit_reg:
        return logits, weight
    lam = cfg.neg_scale
    pos = positives(labels)
    logits = (logits + bias) * (pos + lam * (1.0 - pos))
    weight = weight * (pos + (1.0 - pos) / lam)
    return logits, weight


def bce(logits, labels):
    """Stable BCE-with-logits, element-wise: max(x,0) - x*y + log(1 + exp(-|x|))."""
    return logits.clamp(min=0) - logits * labels + torch.log1p(torch.exp(-logits.abs()))


def _focal_derivative(x, y, loss, modulator, gamma):
    """d/dx of (1 - p_t)^gamma * l, finite at saturation (see _FocalBCE). When the backward itself
    is differentiated (create_graph, torch.func), l and 1 - p_t are recomputed from x: the saved
    ones are constants to autograd, and a second derivative needs their dependence on x."""
    if torch.is_grad_enabled() or transformed(x):
        loss = bce(x, y)
        modulator = -torch.expm1(-loss)
    p_t = 1.0 - modulator
    ratio = torch.where(modulator > 0, loss / modulator, torch.ones_like(loss))
    return (torch.sigmoid(x) - y) * modulator.pow(gamma) * (1.0 + gamma * p_t * ratio)


class _FocalBCE(torch.autograd.Function):
    """(1 - p_t)^gamma * l with p_t = exp(-l), l = bce(x, y), gradient through p_t.

    Autograd of the naive form meets inf * 0 = NaN when gamma < 1 and a logit saturates
    (l = 0).  The exact derivative is finite:
        d/dx = (sigmoid(x) - y) * (1-p_t)^gamma * (1 + gamma * p_t * l / (1 - p_t)),
    with l / (1 - p_t) -> 1 as l -> 0.
    """

    @staticmethod
    def forward(ctx, x, y, gamma):
        loss = bce(x, y)
        modulator = -torch.expm1(-loss)  # 1 - p_t, accurate for small l
        ctx.save_for_backward(x, y, loss, modulator)
        ctx.gamma = gamma
        return modulator.pow(gamma) * loss

    @staticmethod
    def backward(ctx, grad):
        x, y, loss, modulator = ctx.saved_tensors
        return grad * _focal_derivative(x, y, loss, modulator, ctx.gamma), None, None


class _FocalBCETransformable(torch.autograd.Function):
    """_FocalBCE for torch.func transforms (grad, vmap, jacrev) and forward-mode AD: the
    forward/setup_context form they need, with a jvp and a generated vmap rule. Only used under
    those: torch.compile fuses this form far worse (3x slower at 4096 x 1000 on a CPU)."""

    generate_vmap_rule = True  # element-wise throughout

    @staticmethod
    def forward(x, y, gamma):
        loss = bce(x, y)
        modulator = -torch.expm1(-loss)
        return modulator.pow(gamma) * loss, loss, modulator  # l and 1 - p_t ride along, not recomputed

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, y, gamma = inputs
        _, loss, modulator = output
        ctx.mark_non_differentiable(loss, modulator)
        ctx.save_for_backward(x, y, loss, modulator)
        ctx.save_for_forward(x, y, loss, modulator)
        ctx.gamma = gamma

    @staticmethod
    def backward(ctx, grad, _grad_loss, _grad_modulator):
        x, y, loss, modulator = ctx.saved_tensors
        return grad * _focal_derivative(x, y, loss, modulator, ctx.gamma), None, None

    @staticmethod
    def jvp(ctx, x_tangent, _y_tangent, _gamma_tangent):
        x, y, loss, modulator = ctx.saved_tensors
        return _focal_derivative(x, y, loss, modulator, ctx.gamma) * x_tangent, None, None


# --------------------------------------------------------------------------------------------
# Asymmetric focusing (ASL, Ridnik et al., ICCV 2021), also DB's when an asymmetric option is set.
# With p = sigmoid(x), p_m = max(p - clip, 0) and target y (soft allowed), ASL's element loss is
#     -A * B^g,  A = pw y log p + (1 - y) log(1 - p_m),  B = y (1 - p) + (1 - y) p_m = 1 - p_t,
#     g = gamma_pos y + gamma_neg (1 - y);
# for y = 1: -pw (1 - p)^g+ log p; for y = 0: -p_m^g- log(1 - p_m). The logs are exact (no eps
# clamp: the authors' clamp at 1e-8 only changes logits beyond about 18 in magnitude).
# --------------------------------------------------------------------------------------------
def _asl_terms(x, y, pos_weight, clip):
    """A, B and the pieces of their derivatives: (A, B, dA/dx, dB/dx)."""
    p, q = torch.sigmoid(x), torch.sigmoid(-x)  # p and 1 - p, each accurate where the other is near 1
    pw = 1.0 if pos_weight is None else pos_weight
    s = p * q  # dp/dx
    if clip > 0:
        p_m = (p - clip).clamp(min=0)
        shifted = p > clip
        log_q = torch.log1p(-p_m)
        dlog_q = torch.where(shifted, -s / (q + clip), torch.zeros_like(x))  # 1 - p_m = q + clip
        dp_m = torch.where(shifted, s, torch.zeros_like(x))
    else:
        p_m, log_q, dlog_q, dp_m = p, -torch.nn.functional.softplus(x), -p, s
    log_p = -torch.nn.functional.softplus(-x)
    a = pw * y * log_p + (1 - y) * log_q
    b = y * q + (1 - y) * p_m
    return a, b, pw * y * q + (1 - y) * dlog_q, (1 - y) * dp_m - y * s


def _asl_derivative(x, y, pos_weight, gammas, clip, focus_grad):
    """d/dx of -A * B^g in closed form, finite for every g >= 0:
        -B^g (dA + g (A / B) dB)     (focus_grad: the weight's derivative flows, as in autograd)
        -B^g dA                      (the focusing weight held constant)
    A / B -> -(pw y + 1 - y) where B -> 0 (hard labels at saturation): log p / (1 - p) -> -1 and
    log(1 - p_m) / p_m -> -1."""
    a, b, da, db = _asl_terms(x, y, pos_weight, clip)
    g = gammas[0] * y + gammas[1] * (1 - y)
    weight = b.pow(g)
    if not focus_grad:
        return -weight * da
    pw = 1.0 if pos_weight is None else pos_weight
    ratio = torch.where(b > 0, a / torch.where(b > 0, b, torch.ones_like(b)), -(pw * y + (1 - y)))
    return -weight * (da + g * ratio * db)


class _AsymmetricFocal(torch.autograd.Function):
    """-A * B^g with its closed-form gradient (autograd of the naive form meets inf * 0 = NaN at
    saturation for fractional g); in the form torch.func needs (setup_context, jvp, vmap rule)."""

    generate_vmap_rule = True  # element-wise throughout

    @staticmethod
    def forward(x, y, pos_weight, gammas, clip, focus_grad):
        a, b, _, _ = _asl_terms(x, y, pos_weight, clip)
        return -a * b.pow(gammas[0] * y + gammas[1] * (1 - y))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, y, pos_weight, *ctx.options = inputs
        ctx.save_for_backward(x, y, pos_weight)
        ctx.save_for_forward(x, y, pos_weight)

    @staticmethod
    def backward(ctx, grad):
        x, y, pos_weight = ctx.saved_tensors
        return (grad * _asl_derivative(x, y, pos_weight, *ctx.options),) + (None,) * 5

    @staticmethod
    def jvp(ctx, x_tangent, *_):
        x, y, pos_weight = ctx.saved_tensors
        return _asl_derivative(x, y, pos_weight, *ctx.options) * x_tangent


def smoothed(targets, cfg: LossConfig):
    """timm's label smoothing: targets move towards 0.5."""
    return targets * (1.0 - cfg.smoothing) + 0.5 * cfg.smoothing if cfg.smoothing else targets


def asymmetric_focal(logits, targets, cfg: LossConfig, pos_weight=None):
    """ASL's element loss on ``targets`` (the positive mass, soft allowed), see above."""
    return _AsymmetricFocal.apply(logits, smoothed(targets, cfg), pos_weight, cfg.gammas, cfg.clip, cfg.focus_grad)


def focal_bce(logits, labels, cfg: LossConfig, pos_weight=None):
    if cfg.asymmetric or pos_weight is not None:
        return (cfg.balance_param if cfg.focal else 1.0) * asymmetric_focal(logits, labels, cfg, pos_weight)
    if not cfg.focal:
        return bce(logits, labels)
    if transformed(logits):
        return cfg.balance_param * _FocalBCETransformable.apply(logits, labels, cfg.gamma)[0]
    return cfg.balance_param * _FocalBCE.apply(logits, labels, cfg.gamma)


def reduce(loss, labels, cfg: LossConfig, avg_factor=None):
    if cfg.reduction == "none":
        return loss
    if cfg.reduction == "per_class":
        return loss.sum(dim=0)
    total = loss.sum()
    if cfg.reduction == "sum":
        return total
    if cfg.reduction == "batchmean":
        return total / max(loss.shape[0], 1)
    if avg_factor is not None:
        return total / avg_factor
    # at least 1: a batch whose labels are all unknown (or empty) has loss 0 and gradient 0, not 0/0
    return total / known(labels).sum().clamp(min=1)


# --------------------------------------------------------------------------------------------
# The whole loss.
# --------------------------------------------------------------------------------------------
def compute_dtype(logits):
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def distribution_balanced_loss(logits, labels, class_freq, train_num, cfg: LossConfig,
                               weight=None, avg_factor=None, pos_weight=None, rows=None):
    """Reference DB loss. ``class_freq`` is a 1-D tensor of n_j, ``train_num`` T (float); both may
    be None for a loss that uses no class statistics (no re-weighting, no NTR: ASL).
    ``pos_weight`` (broadcast to the classes) multiplies the positive log term (ASL's form).
    ``rows = (stats, row_max, batch_max)``: what the weights need from all C classes, for a call on
    a slice of the columns (the chunked classifier); see row_statistics and normalize.

    Math runs in fp32 (fp64 for fp64 logits); the loss comes back in that dtype and the gradient
    with respect to ``logits`` in the logits' dtype (autograd casts it back).
    """
    dtype = compute_dtype(logits)
    z = logits.to(dtype)
    y = labels.to(dtype)
    if class_freq is None:
        if cfg.reweight is not None or cfg.logit_reg:
            raise ValueError("reweight and logit_reg need the class statistics (class_freq, train_num)")
        x, w = z, torch.ones_like(y)
    else:
        n = class_freq.to(device=z.device, dtype=torch.float64)
        stats, row_max, batch_max = rows or (None, None, None)
        w = normalize(reweight(y, n, train_num, cfg, stats), cfg, row_max, batch_max)
        x, w = negative_tolerant(z, w, y, ntr_bias(n, train_num, cfg).to(dtype), cfg)
    if pos_weight is not None:
        pos_weight = torch.as_tensor(pos_weight, dtype=dtype, device=z.device)
    loss = focal_bce(x, positives(y), cfg, pos_weight) * w * cfg.loss_weight
    if weight is not None:
        loss = loss * weight.to(dtype)
    loss = loss * known(y)  # unknown labels: no loss, no gradient
    return reduce(loss, y, cfg, avg_factor)
