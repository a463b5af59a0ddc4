"""What is measured: cases, suites, the bytes a case must move, and the fields of a record.

Plain Python: the report reads these names without importing torch.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

# Record fields in results.json / results.csv. Fields after "status" were added later; a record
# from an older results.json lacks them and every reader uses .get() for them.
FIELDS = ["suite", "backend", "device", "device_name", "torch", "triton", "date", "N", "C", "elements",
          "logits_dtype", "labels_dtype", "config", "mode", "median_ms", "p20_ms", "p80_ms", "reps",
          "input_sets", "elements_per_s", "bytes_moved", "gbytes_per_s", "copy_gbytes_per_s",
          "roofline_fraction", "peak_mem_bytes", "speedup_vs_eager", "speedup_vs_compile",
          "first_call_s", "max_rel_err", "compile_shapes", "cpu_count", "status",
          "host_us", "device_us", "device_timing", "roofline_basis", "host_ratio_vs_bce",
          "device_speedup_vs_compile", "autotune_config", "loss", "fused_kernel"]

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp64": 8, "uint8": 1, "bool": 1, "float": 4}
LOGIT_DTYPES = ("fp32", "bf16", "fp16", "fp64")
LABEL_DTYPES = ("uint8", "bool", "float")
MODES = ("fwd", "fwd+bwd")
# Baselines measured in every run: the reference in eager mode, torch.compile of it, and torch's
# plain BCE-with-logits (a different, cheaper loss: the floor for host time per call).
BASELINES = ("eager", "compile", "bce")
# Speedups are reported against these two; bce is the host-time yardstick (host_ratio_vs_bce).
SPEEDUP_BASELINES = ("eager", "compile")
CONFIG = "coco-mlt"  # the authors' DB-focal config: the loss defaults
# The losses a case can measure. A record without "loss" (results from before ASL) is db-focal.
# db-focal: DistributionBalancedLoss with CONFIG; eager = its reference backend.
# asl: AsymmetricLoss at Ridnik et al.'s defaults; eager = the paper's formula written out in
# PyTorch ops (measure.asl_formula), compile = torch.compile of that formula.
DEFAULT_LOSS = "db-focal"
LOSSES = ("db-focal", "asl")
LOSS_CONFIGS = {"db-focal": CONFIG, "asl": "gamma_neg=4 gamma_pos=1 clip=0.05 sum"}
TARGET_ELEMENTS = 1 << 26
# Issue targets for forward+backward, bf16 logits + uint8 labels, N*C >= 2^26.
TARGETS = {"roofline_fraction": 0.85, "speedup_vs_compile": 3.0, "speedup_vs_eager": 25.0}
# Below this many elements torch.compile gets one graph per (C, dtypes, mode) with the batch
# dimension dynamic (--compile-shapes auto); at and above it one static graph per shape.
DYNAMIC_BELOW = 1 << 22
SUITES = ("quick", "coco", "openimages", "xmc", "targets", "perf", "asl", "all")
# Losses a suite measures when --losses is not given; every other suite: DEFAULT_LOSS only.
SUITE_LOSSES = {"asl": ("db-focal", "asl")}


@dataclass(frozen=True)
class Case:
    suite: str
    N: int
    C: int
    logits_dtype: str
    labels_dtype: str
    mode: str
    loss: str = DEFAULT_LOSS

    @property
    def group(self):
        """Cases that can share a torch.compile graph when the batch dimension is dynamic."""
        return (self.C, self.logits_dtype, self.labels_dtype, self.loss)

    @property
    def inputs_key(self):
        return (self.N, self.C, self.logits_dtype, self.labels_dtype)


def _sweep(suite, C, Ns, pivot, dtypes, extra_labels, modes=MODES):
    """N sweep with uint8 labels for every logits dtype; the other label dtypes at one N, with the
    main (last) logits dtype."""
    shapes = [(n, dt, "uint8") for dt in dtypes for n in Ns]
    shapes += [(pivot, dtypes[-1], lab) for lab in extra_labels]
    return [Case(suite, n, C, dt, lab, mode) for n, dt, lab in shapes for mode in modes]


def _fwd_bwd(suite, shapes, logits_dtype):
    return [Case(suite, n, c, logits_dtype, "uint8", "fwd+bwd") for n, c in shapes]


TARGET_SHAPES = [(1 << 20, 80), (8192, 9605), (512, 131072), (128, 1048576)]
# device_check.sh's performance-first pass: three targets and one host-bound training shape.
PERF_SHAPES = [(1 << 20, 80), (8192, 9605), (512, 131072), (256, 80)]
# ASL next to DB-focal: training-size shapes of two label spaces, forward+backward.
ASL_SHAPES = [(256, 80), (4096, 80), (65536, 80), (64, 9605), (1024, 9605)]


def suite_cases(name, logit_dtypes, losses=None):
    """The cases of suite ``name``, once per loss in ``losses`` (None: the suite's own,
    SUITE_LOSSES, else DEFAULT_LOSS)."""
    losses = SUITE_LOSSES.get(name, (DEFAULT_LOSS,)) if losses is None else tuple(losses)
    unknown = [loss for loss in losses if loss not in LOSSES]
    if unknown or not losses:
        raise ValueError(f"unknown loss(es) {unknown}; choose from {', '.join(LOSSES)}")
    cases = _suite_shapes(name, logit_dtypes)
    return [replace(c, loss=loss) for loss in losses for c in cases]


def _suite_shapes(name, logit_dtypes):
    extras = ("bool", "float")
    if name == "quick":
        return (_sweep("quick", 80, [256, 4096], 256, logit_dtypes, extras)
                + _sweep("quick", 9605, [64], 64, logit_dtypes, ()))
    if name == "smoke":  # for the test suite: one tiny shape
        return _sweep("smoke", 80, [16], 16, logit_dtypes, ())
    if name == "coco":
        return _sweep("coco", 80, [256, 1024, 4096, 16384, 65536], 4096, logit_dtypes, extras)
    if name == "openimages":
        return _sweep("openimages", 9605, [256, 1024, 4096], 1024, logit_dtypes, extras)
    if name == "xmc":
        return (_sweep("xmc", 131072, [16, 64, 256], 64, logit_dtypes, ("bool",))
                + _sweep("xmc", 1048576, [16, 64, 256], 64, logit_dtypes, ()))
    if name == "targets":
        return _fwd_bwd("targets", TARGET_SHAPES, logit_dtypes[-1])
    if name == "perf":
        return _fwd_bwd("perf", PERF_SHAPES, logit_dtypes[-1])
    if name == "asl":
        return _fwd_bwd("asl", ASL_SHAPES, logit_dtypes[-1])
    if name == "all":
        return [c for s in ("coco", "openimages", "xmc") for c in _suite_shapes(s, logit_dtypes)]
    raise ValueError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)} (or a comma list)")


# Suites whose largest shape per C runs first. Triton's autotuner keys on C, not N: the first shape
# of a C decides the tiles for the later ones, and a target must be timed with the tiles it would
# get on its own, not those tuned for 256 rows.
LARGEST_FIRST = ("perf",)


def order_cases(cases):
    """Keep the suites' order; within a suite run a compile group's shapes back to back so one
    torch.compile graph serves them, smallest N first (largest first in LARGEST_FIRST suites). A
    shape and loss listed twice run once, under the first named suite that has them (quick only
    when no other suite does)."""
    suites = list(dict.fromkeys(c.suite for c in cases))
    owner = {}
    for suite in sorted(suites, key=lambda s: s == "quick"):
        for c in cases:
            if c.suite == suite:
                owner.setdefault((c.inputs_key, c.mode, c.loss), suite)
    out, seen = [], set()
    for suite in suites:
        mine = []
        for c in cases:
            key = (c.inputs_key, c.mode, c.loss)
            if c.suite == suite and owner[key] == suite and key not in seen:
                seen.add(key)
                mine.append(c)
        sign = -1 if suite in LARGEST_FIRST else 1
        for group in dict.fromkeys(c.group for c in mine):
            out += sorted((c for c in mine if c.group == group), key=lambda c: (sign * c.N, MODES.index(c.mode)))
    return out


def bytes_moved(case):
    """The fewest bytes a kernel must move: logits and labels read once, the gradient written once."""
    logit_bytes = DTYPE_BYTES[case.logits_dtype]
    grad = logit_bytes if case.mode == "fwd+bwd" else 0
    return case.N * case.C * (logit_bytes + DTYPE_BYTES[case.labels_dtype] + grad)


def input_bytes(case):
    """Bytes of one input set (logits and labels)."""
    return case.N * case.C * (DTYPE_BYTES[case.logits_dtype] + DTYPE_BYTES[case.labels_dtype])


def n_input_sets(set_bytes, cache, mem_cap):
    """Enough input sets to overflow the cache twice over, 2 to 8 of them, within mem_cap bytes."""
    set_bytes = max(set_bytes, 1)
    if 2 * set_bytes > mem_cap:
        return 1
    return int(max(2, min(8, -(-2 * cache // set_bytes), mem_cap // set_bytes)))
