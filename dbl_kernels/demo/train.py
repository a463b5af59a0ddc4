"""Train the same small model with each loss on the long-tailed digits; compare mAP by split."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .. import AsymmetricLoss, DistributionBalancedLoss
from ..stats import ClassStats
from . import data as data_mod
from .metrics import class_splits, per_class_ap, split_map


@dataclass(frozen=True)
class LossChoice:
    """One compared loss: the package class and its options (everything else at its defaults)."""

    cls: type
    options: dict

    def build(self, stats, backend):
        if self.cls is AsymmetricLoss:  # uses no class statistics
            return AsymmetricLoss(backend=backend, **self.options)
        return self.cls(stats, backend=backend, **self.options)

    def describe(self):
        return {"class": self.cls.__name__, "options": dict(self.options)}


# The DB family through DistributionBalancedLoss, everything else at the authors' COCO-MLT
# defaults (focal gamma 2 with balance_param 2; CB beta 0.9, "average_w"; DB map alpha/beta/gamma
# 0.1/10/0.2; NTR lambda 2, kappa 0.05). ASL with Ridnik et al.'s defaults (gamma_neg 4,
# gamma_pos 1, clip 0.05); DB-ASL is DB-focal's defaults with ASL's negative side (gamma_neg 4,
# clip 0.05; positives keep DB's gamma 2). Every loss is a mean over the N x C entries: ASL's
# own default is a sum, but the DB losses average, and one reduction keeps the comparison about
# the loss's shape, not its scale (AdamW is nearly scale-free anyway: see Settings).
LOSSES = {
    "BCE": LossChoice(DistributionBalancedLoss, dict(reweight=None, focal=False, logit_reg=False)),
    "focal": LossChoice(DistributionBalancedLoss, dict(reweight=None, focal=True, logit_reg=False)),
    "CB-focal": LossChoice(DistributionBalancedLoss, dict(reweight="CB", focal=True, logit_reg=False)),
    "DB-focal": LossChoice(DistributionBalancedLoss, dict()),
    "ASL": LossChoice(AsymmetricLoss, dict(gamma_neg=4, gamma_pos=1, clip=0.05, reduction="mean")),
    "DB-ASL": LossChoice(DistributionBalancedLoss, dict(gamma_neg=4, clip=0.05)),
}
SAMPLERS = ("uniform", "class-aware")


@dataclass(frozen=True)
class Settings:
    """Model and optimiser, shared by every loss: learning rate and batch size chosen on BCE's
    results, epochs where the results stop moving much; nothing is set per loss.

    AdamW, because its update does not depend on the loss's overall scale (up to its eps): CB
    weights with beta 0.9 shrink the loss about tenfold, and ASL's focusing shrinks the negatives'
    terms by orders of magnitude, which under SGD would act as a smaller learning rate rather
    than as re-weighting. Only the balance between terms within a loss moves the model.
    """

    epochs: int = 100
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    hidden: int = 128


class PatchNet(nn.Module):
    """A tiny convolutional net: an MLP on each 8 x 8 slot (a stride-8 convolution), max-pooled.

    Sharing the slot encoder means a digit is recognised wherever it sits, so the examples of a
    rare digit are not spread over four position-specific detectors.
    """

    def __init__(self, num_classes, hidden=128):
        super().__init__()
        self.encode = nn.Sequential(nn.Linear(data_mod.DIGIT ** 2, hidden), nn.ReLU(),
                                    nn.Linear(hidden, hidden), nn.ReLU())
        self.classify = nn.Linear(hidden, num_classes)

    def forward(self, images):
        n = images.shape[0]
        patches = images.reshape(n, 2, data_mod.DIGIT, 2, data_mod.DIGIT).transpose(2, 3)
        features = self.encode(patches.reshape(n, data_mod.SLOTS, data_mod.DIGIT ** 2))
        return self.classify(features.amax(dim=1))


def class_aware_order(members, length, generator):
    """One epoch of class-aware sampling (the authors' sampler): a class drawn uniformly, then
    one of its images drawn uniformly, ``length`` times."""
    sizes = torch.tensor([len(m) for m in members])
    classes = torch.randint(len(members), (length,), generator=generator)
    within = (torch.rand(length, generator=generator) * sizes[classes]).long()
    starts = torch.cumsum(sizes, 0) - sizes
    return torch.cat(members)[starts[classes] + within]


def train_one(loss_fn, train_x, train_y, settings, seed, sampler="uniform", on_epoch=None):
    """Train a fresh model. The seed fixes its initial weights and its batch order, so every loss
    starts from the same weights and (for one sampler) sees the same batches."""
    torch.manual_seed(seed)
    model = PatchNet(train_y.shape[1], settings.hidden).to(train_x.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps = settings.epochs * math.ceil(len(train_x) / settings.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    generator = torch.Generator().manual_seed(seed)
    members = [torch.nonzero(train_y[:, c].cpu() > 0).flatten() for c in range(train_y.shape[1])]
    model.train()
    for _ in range(settings.epochs):
        if sampler == "class-aware":
            order = class_aware_order(members, len(train_x), generator)
        else:
            order = torch.randperm(len(train_x), generator=generator)
        order = order.to(train_x.device)
        for start in range(0, len(order), settings.batch_size):
            batch = order[start:start + settings.batch_size]
            loss = loss_fn(model(train_x[batch]), train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if on_epoch is not None:
            on_epoch()
    return model


@torch.no_grad()
def predict(model, images):
    model.eval()
    return torch.sigmoid(model(images)).cpu().numpy()


def run_seed(seed, settings, losses=tuple(LOSSES), samplers=SAMPLERS, backend="auto", device="cpu",
             on_epoch=None, on_run=None):
    """Build the seed's data set, train every (sampler, loss) pair on it and score the test set.

    Returns the data set's class counts and, per (sampler, loss), the per-class AP (fractions).
    """
    data = data_mod.build_dataset(seed)
    train_x = torch.from_numpy(data.train_images).to(device)
    train_y = torch.from_numpy(data.train_labels).to(device=device, dtype=torch.float32)
    test_x = torch.from_numpy(data.test_images).to(device)
    stats = ClassStats.from_labels(data.train_labels)
    splits = class_splits(data.class_counts)
    per_class = {}
    for sampler in samplers:
        for name in losses:
            loss_fn = LOSSES[name].build(stats, backend).to(device)
            model = train_one(loss_fn, train_x, train_y, settings, seed, sampler, on_epoch)
            ap = per_class_ap(predict(model, test_x), data.test_labels)
            per_class[(sampler, name)] = ap
            if on_run is not None:
                on_run(sampler, name, split_map(ap, splits))
    return data.class_counts, per_class
