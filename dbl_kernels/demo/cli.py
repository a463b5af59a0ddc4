"""Command line of ``python -m dbl_kernels.demo``."""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from .. import __version__, backends
from . import report
from .metrics import HEAD_MIN, TAIL_MAX
from .train import LOSSES, SAMPLERS, Settings, run_seed

EXTRAS = {"sklearn": "scikit-learn", "matplotlib": "matplotlib", "tqdm": "tqdm"}
QUICK = dict(seeds=3, epochs=15)
DEFAULT = dict(seeds=5, epochs=Settings.epochs)

DESCRIPTION = """\
Long-tailed multi-label demo of the Distribution-Balanced loss (Wu et al., ECCV 2020).

Composes scikit-learn's bundled 8x8 digits into 16x16 images of 1-3 digits whose training label
frequencies follow COCO-MLT's long tail (1128 down to 6 positives per class), with a balanced
test set built from held-out digits. Trains the same small network with BCE, focal, CB-focal,
DB-focal, ASL (Ridnik et al., ICCV 2021) and DB-ASL (DB-focal with ASL's negative side), at the
authors' default settings with no per-loss tuning and every loss averaged over the labels, each
with uniform and with class-aware sampling, on identical data, seeds, optimiser and epochs, and
reports mAP over all classes and over head (> 100 training positives), medium and tail (< 20)
classes, and paired per-seed differences."""

EPILOG = """\
The default run (5 seeds x 100 epochs, 60 models) takes about 3 minutes on an idle 2-core CPU;
--quick (3 seeds x 15 epochs, undertrained) about 20 s. Needs the extras: pip install scikit-learn matplotlib tqdm."""


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m dbl_kernels.demo", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=None, metavar="N",
                        help=f"train with seeds 0..N-1 and report mean ± std (default {DEFAULT['seeds']}); "
                             "a seed fixes the data set (which digit is rare, the composition), "
                             "the initial weights and the batch order")
    parser.add_argument("--epochs", type=int, default=None, metavar="E",
                        help=f"epochs per training run (default {DEFAULT['epochs']}, --quick {QUICK['epochs']})")
    parser.add_argument("--backend", default="auto", choices=backends.BACKENDS,
                        help="the loss's backend (default auto: the fastest one available here)")
    parser.add_argument("--device", default="cpu", help="torch device to train on (default cpu)")
    parser.add_argument("--out", type=Path, default=Path("dbl_demo"), metavar="DIR",
                        help="folder for the plots and results.json (default ./dbl_demo)")
    parser.add_argument("--sampler", default="both", choices=(*SAMPLERS, "both"),
                        help="uniform batches, the authors' class-aware re-sampling (part of their "
                             "DB-focal recipe), or both (default)")
    parser.add_argument("--losses", default=",".join(LOSSES), metavar="L1,L2",
                        help=f"comma-separated subset of {', '.join(LOSSES)} (default all)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a fast smoke run: {QUICK['seeds']} seeds x {QUICK['epochs']} epochs "
                             "(numbers undertrained)")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else DEFAULT
    args.seeds = preset["seeds"] if args.seeds is None else args.seeds
    args.epochs = preset["epochs"] if args.epochs is None else args.epochs
    if args.seeds < 1 or args.epochs < 1:
        parser.error("--seeds and --epochs must be at least 1")
    args.losses = [name.strip() for name in args.losses.split(",") if name.strip()]
    unknown = [name for name in args.losses if name not in LOSSES]
    if unknown or not args.losses:
        parser.error(f"--losses: unknown {unknown}; choose from {', '.join(LOSSES)}")
    args.samplers = SAMPLERS if args.sampler == "both" else (args.sampler,)
    return args


def missing_extras():
    return [package for module, package in EXTRAS.items() if importlib.util.find_spec(module) is None]


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    missing = missing_extras()
    if missing:
        print(f"The demo needs the optional packages {', '.join(missing)}: pip install {' '.join(missing)} "
              "(all of its extras: pip install scikit-learn matplotlib tqdm)", file=sys.stderr)
        return 2
    try:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: this torch sees no CUDA device")
        backend = backends.resolve(args.backend, device.type)
        args.out.mkdir(parents=True, exist_ok=True)
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    # The model is tiny: a second thread only adds synchronisation, and spins when cores are shared.
    torch.set_num_threads(1)
    try:
        return _run(args, device, backend)
    finally:
        torch.set_num_threads(threads)


def _run(args, device, backend):
    from tqdm import tqdm

    settings = replace(Settings(), epochs=args.epochs)
    seeds = list(range(args.seeds))
    runs, started = [], time.perf_counter()
    total = len(seeds) * len(args.samplers) * len(args.losses) * args.epochs
    print(f"dbl_kernels {__version__}: loss backend {backend!r} on {device}; {len(seeds)} seed(s) x "
          f"{len(args.samplers)} sampler(s) x {len(args.losses)} losses x {args.epochs} epochs")
    with tqdm(total=total, unit="epoch", dynamic_ncols=True) as bar:
        for seed in seeds:
            def on_run(sampler, loss, maps, seed=seed):
                bar.set_postfix_str(f"last: seed {seed} {sampler} {loss} mAP {maps['total']:.1f} "
                                    f"tail {maps['tail']:.1f}")

            bar.set_description(f"seed {seed}")
            counts, per_class = run_seed(seed, settings, args.losses, args.samplers, backend, device,
                                         on_epoch=lambda: bar.update(1), on_run=on_run)
            runs += [report.run_record(seed, sampler, loss, counts, ap) for (sampler, loss), ap in per_class.items()]
    elapsed = time.perf_counter() - started

    summary = report.summarize(runs)
    print()
    print(report.table(summary, len(seeds), args.epochs, runs[0]["class_counts"]))
    gains = report.paired_gains(runs, report.comparisons(args.losses))
    if gains:
        print()
        print(report.gains_table(gains))
    if args.quick:
        print("(--quick: too few epochs for converged numbers; run without --quick for the real comparison)")
    print(f"\ntrained {len(runs)} models in {elapsed:.0f} s")

    paths = {"per-class AP plot": args.out / "per_class_ap.png", "mAP-by-split plot": args.out / "map_by_split.png",
             "results": args.out / "results.json"}
    report.plot_per_class(runs, args.samplers, args.losses, paths["per-class AP plot"])
    report.plot_splits(summary, args.samplers, args.losses, paths["mAP-by-split plot"])
    report.write_json(paths["results"], version=__version__, backend=backend, device=str(device),
                      seeds=seeds, settings=asdict(settings), quick=args.quick, elapsed_s=elapsed,
                      splits={"head_min": HEAD_MIN, "tail_max": TAIL_MAX},
                      losses={name: LOSSES[name].describe() for name in args.losses},
                      summary=summary, paired_gains=gains, runs=runs)
    for what, path in paths.items():
        print(f"{what}: {path}")
    return 0
