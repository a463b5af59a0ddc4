"""Where the host time of one loss call goes: wall clock per phase and the profiler's top ops.

    python benchmarks/overhead.py [--device cuda] [--backend triton] [--n 256] [--c 80]

Small shapes make any call host-bound, so the time per call is the Python/dispatcher/launch cost
that a training step pays on top of the kernel. Prints ms per call for: the forward under
no_grad, the forward with grad, forward + ``loss.backward()`` (as a training step: ``x.grad = None``
first), BCE-with-logits forward + backward on the same tensors, the raw fused op, and the device-side
scale of the gradient; then the profiler's ops sorted
by self CPU time for forward + backward, and with ``--python-profile CALLS`` the Python functions
by their own time (cProfile).
"""
import argparse
import time

import torch

import dbl_kernels as dk
from dbl_kernels import backends, ops
from dbl_kernels._spec import make_aux


def _ms(fn, device, reps):
    for _ in range(5):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--c", type=int, default=80)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--python-profile", type=int, default=0, metavar="CALLS",
                        help="also cProfile this many forward + backward calls (top functions by own time)")
    parser.add_argument("--python-rows", type=int, default=20)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    loss_fn = dk.DistributionBalancedLoss.from_preset("coco-mlt", backend=args.backend).to(device)
    stats = dk.ClassStats.from_counts(loss_fn.stats.class_freq[:1].repeat(args.c), train_num=loss_fn.stats.train_num) \
        if args.c != 80 else loss_fn.stats
    loss_fn = dk.DistributionBalancedLoss(stats, backend=args.backend).to(device)
    backend = backends.resolve(args.backend, device.type)
    z = torch.randn(args.n, args.c, device=device, dtype=torch.bfloat16)
    y = (torch.rand(args.n, args.c, device=device) < 0.05).to(torch.uint8)
    zg = z.clone().requires_grad_()

    def fwd_nograd():
        with torch.no_grad():
            return loss_fn(z, y)

    def fwd_bwd():
        zg.grad = None
        loss_fn(zg, y).backward()

    y_float = y.to(zg.dtype)

    def bce_fwd_bwd():  # the yardstick: torch's own fused BCE on the same tensors
        zg.grad = None
        torch.nn.functional.binary_cross_entropy_with_logits(zg, y_float).backward()

    rows = [("forward, no_grad", _ms(fwd_nograd, device, args.reps)),
            ("forward, grad", _ms(lambda: loss_fn(zg, y), device, args.reps)),
            ("forward + backward", _ms(fwd_bwd, device, args.reps)),
            ("bce forward + backward", _ms(bce_fwd_bwd, device, args.reps))]
    if backend != "reference":
        spec = loss_fn.spec
        params = loss_fn._params(torch.float32, device)
        aux = make_aux(z, y, loss_fn.config, spec, loss_fn.class_freq, stats.train_num)
        op = backends.fused_op(backend)
        rows.append(("make_aux", _ms(lambda: make_aux(z, y, loss_fn.config, spec, loss_fn.class_freq,
                                                      stats.train_num), device, args.reps)))
        rows.append(("raw fused op, need_grad", _ms(lambda: op(*ops.op_args(z, y, None, params, aux, spec, True)),
                                                   device, args.reps)))
        grad = torch.randn_like(z)
        one = torch.ones((), device=device)
        device_scale = ops._DEVICE_SCALE.get(op)  # the backend's own in-place scale
        rows.append(("scale grad by 1.0", _ms(lambda: ops._scale_in_place(grad, one, device_scale), device,
                                              args.reps)))
    print(f"backend {backend} on {device}, {args.n} x {args.c} bf16/uint8, ms per call (host-bound at this size)")
    for name, ms in rows:
        print(f"  {name:28s} {ms:8.4f}")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(20):
            fwd_bwd()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60))
    if args.python_profile:  # the Python functions behind the host time (the op table hides them)
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.runcall(lambda: [fwd_bwd() for _ in range(args.python_profile)])
        print(f"Python functions by own time over {args.python_profile} forward + backward calls:")
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.python_rows)


if __name__ == "__main__":
    main()
