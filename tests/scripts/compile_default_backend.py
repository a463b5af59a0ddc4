"""Run in a fresh process by tests/test_first_hour.py: torch.compile(fullgraph=True) of the default
module and of the functional form, forward and backward, on backend="auto"; prints one JSON line."""
import json
import warnings

import torch

import dbl_kernels as dk

warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(16, 20, generator=g)
    y = (torch.rand(16, 20, generator=g) < 0.3).to(torch.uint8)
    loss_fn = dk.DistributionBalancedLoss("voc-mlt")

    def run(fn):
        z = z0.clone().requires_grad_()
        loss = fn(z, y)
        loss.backward()
        return loss.detach(), z.grad

    module = torch.compile(lambda z, y: loss_fn(z, y), fullgraph=True)
    functional = torch.compile(lambda z, y: dk.distribution_balanced_loss(z, y, "voc-mlt"), fullgraph=True)
    got = [run(module), run(module), run(functional), run(functional)]  # second calls: cached graphs
    eager = run(loss_fn)
print(json.dumps({
    "equal": [bool(torch.equal(a[0], eager[0]) and torch.equal(a[1], eager[1])) for a in got],
    "backend": dk.backends.resolve("auto", "cpu"),
    "warnings": [f"{w.category.__name__}: {w.message}" for w in caught
                 if issubclass(w.category, UserWarning)],
}))
