"""Every launchable specialisation of the Triton kernels, for ahead-of-time compilation checks
(``benchmarks/static_check.py``): signatures, constexprs and options as ``triton.compile`` takes them.

Main paths (``main_path=True``, held to the instruction budget per element by the static check):
the losses of ``MAIN_LOSSES`` x logits ``MAIN_LOGITS`` x labels ``MAIN_LABELS`` x with and without
the gradient, at the shapes ``MAIN_C`` (many rows), each with every tile config the launcher can pick
there (``launch_configs``: what ``launcher._plan`` hands the autotuner on a GPU).
"""
from __future__ import annotations

import itertools

import torch

from .._spec import REWEIGHT_CB_AVG_W, REWEIGHT_NONE, REWEIGHT_REBALANCE
from .tuning import (SCALE_BLOCK, STATS_TILE, STATS_WARPS, even_c, light, loop_configs, one_tile_max_c,
                     row_configs)
from ._math import POW_ANY, POW_NONE, POW_ONE, POW_TWO
from .kernels import (ASYM_CLIP, ASYM_FOCUS_GRAD, ASYM_ON, OPTIONS, STATS_BUFFER, STATS_GIVEN, STATS_INLINE,
                      STATS_MODES, STATS_NONE, _fused_kernel, _scale_kernel, _stats_kernel)
from .launcher import labels_kind

_PTR = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.float64: "*fp64",
        torch.bool: "*i1", torch.uint8: "*u8", torch.int8: "*i8", torch.int16: "*i16", torch.int32: "*i32",
        torch.int64: "*i64"}
LOGIT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
LABEL_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                torch.float16, torch.bfloat16, torch.float32, torch.float64)
WEIGHT_DTYPES = (None,) + LOGIT_DTYPES
# The constexpr axes of _fused_kernel besides dtypes and tiles, and the DB-focal default (COCO).
_AXES = dict(REWEIGHT=tuple(range(6)), NORM=(0, 1, 2), LOGIT_REG=(False, True),
             POW=(POW_NONE, POW_ONE, POW_TWO, POW_ANY), REDUCE_NONE=(False, True), HAS_GRADIENTS=(False, True),
             ASYM=(0, ASYM_ON, ASYM_ON | ASYM_CLIP, ASYM_ON | ASYM_FOCUS_GRAD, ASYM_ON | ASYM_CLIP | ASYM_FOCUS_GRAD),
             CSR=(False, True))
_MAIN = dict(REWEIGHT=REWEIGHT_REBALANCE, NORM=0, LOGIT_REG=True, POW=POW_TWO, REDUCE_NONE=False,
             HAS_GRADIENTS=True, ASYM=0, CSR=False)
_ASL = ASYM_ON | ASYM_CLIP | ASYM_FOCUS_GRAD  # ASL's defaults: clip 0.05, the gradient through the focusing
# The main paths: the authors' COCO-MLT / VOC-MLT config (one specialisation: VOC changes scalars
# only), CB-focal, plain BCE, ASL (Ridnik et al.'s defaults) and DB-ASL (DB-focal + gamma_neg,
# clip), reduction mean (the kernel's sum path); with and without gradient.
MAIN_LOSSES = {
    "db-focal": _MAIN,
    "cb-focal": dict(_MAIN, REWEIGHT=REWEIGHT_CB_AVG_W, LOGIT_REG=False),
    "bce": dict(_MAIN, REWEIGHT=REWEIGHT_NONE, LOGIT_REG=False, POW=POW_NONE),
    "asl": dict(_MAIN, REWEIGHT=REWEIGHT_NONE, LOGIT_REG=False, POW=POW_NONE, ASYM=_ASL),
    "db-asl": dict(_MAIN, ASYM=_ASL),
}
MAIN_LOGITS = (torch.bfloat16, torch.float16, torch.float32)
MAIN_LABELS = (torch.uint8, torch.bool)
MAIN_C = (80, 8192)  # COCO's 80 classes (many rows per tile), and a wide row (the column loop)
# The batch of each main-path shape: the bandwidth targets' N*C >= 2^26 (1,048,576 x 80, 8,192 x 8,192)
MAIN_N = {80: 1 << 20, 8192: 8192}
_INTS = ("N", "C", "stride_z", "stride_y", "stride_wn", "stride_wc", "chunk", "stats_split")
_FLOATS = OPTIONS
_ALIGNED = ("C", "stride_z", "stride_y", "chunk")  # what the runtime sees for C % 16 == 0, contiguous rows
# Many rows, no weight tensor: no column split, so stats_split is 1 (a constexpr to the runtime,
# as every integer argument equal to 1) and the weight strides 0 (divisible by 16).
_MAIN_ALIGNED = _ALIGNED + ("stride_wn", "stride_wc")


def _short(dtype):
    return str(dtype).replace("torch.", "") if dtype is not None else "noweight"


def _spec_dict(fn, name, types, constexprs, num_warps, main_path=False, aligned=(), **extra):
    """One variant as ``triton.compile(ASTSource(fn, signature, constexprs, attrs), target, options)``
    takes it; attrs: 16-divisibility of pointers (torch allocations are 16-byte aligned) and of
    ``aligned`` integers."""
    names = fn.arg_names
    signature = {n: ("constexpr" if n in constexprs else types[n]) for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if n in types and n not in constexprs and (types[n].startswith("*") or n in aligned)}
    return dict(kernel=fn.__name__, name=name, fn=fn, signature=signature, constexprs=dict(constexprs), attrs=attrs,
                options=dict(num_warps=num_warps, num_stages=3), main_path=main_path, **extra)


def compile_key(spec):
    """What makes two variants one compiled kernel (names aside)."""
    return (spec["kernel"], tuple(sorted(spec["signature"].items())), tuple(sorted(spec["constexprs"].items())),
            tuple(sorted((k, str(v)) for k, v in spec["attrs"].items())), tuple(sorted(spec["options"].items())))


def _fused_types(zd, yd, wd):
    cd = torch.float64 if zd == torch.float64 else torch.float32
    return dict(z_ptr=_PTR[zd], y_ptr=_PTR[yd], wt_ptr=_PTR[wd or cd], cp_ptr=_PTR[cd], aux_ptr=_PTR[cd],
                stats_ptr=_PTR[cd], bmax_ptr="*i64", crow_ptr="*i64", col_ptr="*i64", part_ptr=_PTR[cd],
                sync_ptr="*i64", out_ptr=_PTR[cd], grad_ptr=_PTR[zd], **{n: "i32" for n in _INTS}, **{n: "fp32" for n in _FLOATS})


def _tag(zd, yd, wd, axes):
    return (f"{_short(zd)}-{_short(yd)}-{_short(wd)}-rw{axes['REWEIGHT']}-norm{axes['NORM']}"
            f"-ntr{int(axes['LOGIT_REG'])}-pow{axes['POW']}-{'none' if axes['REDUCE_NONE'] else 'sum'}"
            f"-grad{int(axes['HAS_GRADIENTS'])}{'-asym%d' % axes['ASYM'] if axes['ASYM'] else ''}"
            f"{'-csr' if axes['CSR'] else ''}")


def _tile_name(c, w):
    kind = "onetile" if c["ONE_TILE"] else f"unroll{c['C_TILES']}x" if c["C_TILES"] else "B"
    return f"{kind}{c['BLOCK_C']}-N{c['BLOCK_N']}-w{w}"


def launch_configs(n_cols, zd, yd, grad, reweight, asym=0):
    """[(constexprs, num_warps)]: every tile config the launcher (``launcher._plan`` on a GPU: the
    autotune set) can pick for ``n_cols`` columns of ``zd`` logits and ``yd`` labels, no weight."""
    if n_cols <= one_tile_max_c(zd):
        return row_configs(n_cols, zd, grad, light(yd, False, reweight, asym))
    return loop_configs(zd, light(yd, False, reweight, asym))


def _main_variants(quick):
    for (loss, axes), zd, yd, grad, n_cols in itertools.product(MAIN_LOSSES.items(), MAIN_LOGITS, MAIN_LABELS,
                                                                (True, False), MAIN_C):
        if quick and (yd != torch.uint8 or not grad):
            continue
        axes = dict(axes, HAS_GRADIENTS=grad)
        hard, unknown = labels_kind(yd)
        base = dict(axes, HAS_WEIGHT=False, HARD_LABELS=hard, HAS_UNKNOWN=unknown,
                    STATS=STATS_INLINE if axes["REWEIGHT"] in STATS_MODES else STATS_NONE, stats_split=1)
        regime = "rows" if n_cols <= one_tile_max_c(zd) else "loop"
        configs = launch_configs(n_cols, zd, yd, grad, axes["REWEIGHT"], axes["ASYM"])
        even = even_c(n_cols, n_cols, {c["BLOCK_C"] for c, _ in configs},  # as the launcher finds it
                      axes["REWEIGHT"] != REWEIGHT_NONE or axes["POW"] != POW_NONE)
        for c, w in configs:
            yield _spec_dict(_fused_kernel, f"{regime}-{_tag(zd, yd, None, axes)}-C{n_cols}-{_tile_name(c, w)}",
                             _fused_types(zd, yd, None), dict(base, EVEN_C=even, **c), w, True,
                             _MAIN_ALIGNED,
                             problem=dict(loss=loss, C=n_cols, N=MAIN_N[n_cols]), wide_loads=True)


def _fused_variants(zd, yd, wd, axes, block_cs, all_configs, stats_modes=None, wide_loads=False):
    """Rows-regime variants for C in ``block_cs`` and the column loop, one tile config each
    (``all_configs``: every one)."""
    types = _fused_types(zd, yd, wd)
    hard, unknown = labels_kind(yd)
    base = dict(axes, HAS_WEIGHT=wd is not None, HARD_LABELS=hard, HAS_UNKNOWN=unknown)
    needs = axes["REWEIGHT"] in STATS_MODES
    tag = _tag(zd, yd, wd, axes)
    for bc in block_cs:
        configs = row_configs(bc, zd, axes["HAS_GRADIENTS"], light(yd, wd is not None, axes["REWEIGHT"], axes["ASYM"]))
        for c, w in (configs if all_configs else configs[:1]):
            ce = dict(base, STATS=STATS_INLINE if needs else STATS_NONE, EVEN_C=bc % c["BLOCK_C"] == 0, **c)
            if bc == 1:  # a contiguous N x 1 input: the runtime specialises these integers to 1
                ce.update(C=1, stride_z=1, stride_y=1)
            yield _spec_dict(_fused_kernel, f"rows-{tag}-C{bc}-{_tile_name(c, w)}", types, ce, w, False,
                             _ALIGNED if bc % 16 == 0 else _ALIGNED[-1:], wide_loads=wide_loads and bc > 1)
    for st in stats_modes or ((STATS_INLINE, STATS_BUFFER, STATS_GIVEN) if needs else (STATS_NONE,)):
        configs = loop_configs(zd, light(yd, wd is not None, axes["REWEIGHT"], axes["ASYM"]))
        for c, w in (configs if all_configs else configs[:1]):
            # EVEN_C False: any C, with the column tail (the main paths cover C = 8192 without one)
            yield _spec_dict(_fused_kernel, f"loop-{tag}-stats{st}-{_tile_name(c, w)}", types,
                             dict(base, STATS=st, EVEN_C=False, **c), w, False, _ALIGNED, wide_loads=wide_loads)


def specialisations(quick=False, exhaustive=False):
    """Yield every launchable kernel variant as a dict: kernel, name, fn, signature, constexprs,
    attrs, options (num_warps, num_stages), main_path, and for main paths ``problem`` (loss name and
    C); ``wide_loads``: the logits must be read with 16-byte loads.

    * ``quick``: the main paths with uint8 labels and the gradient (every loss, logits dtype, shape
      and tile config), and the helper kernels.
    * default: every main path; the column split (``STATS_BUFFER``, for few rows) of DB-focal with
      bf16/fp32 logits and every loop config; and a covering set: every value of every constexpr axis
      and every dtype appears in some variant (one tile config each). Variants that compile to the
      same kernel as an earlier one are left out.
    * ``exhaustive``: the full product of dtypes x axes x tile configs (millions: for counting or
      sampling, not for compiling them all).
    Covering rows-regime variants are listed for C = 1, 80 (the COCO case: 16-wide column tiles,
    unrolled) and the widest narrow-row C (4096; fp64 1024).
    """
    names = list(_AXES)
    seen, others = set(), []
    if exhaustive:
        for zd, yd, wd in itertools.product(LOGIT_DTYPES, LABEL_DTYPES, WEIGHT_DTYPES):
            for values in itertools.product(*_AXES.values()):
                yield from _fused_variants(zd, yd, wd, dict(zip(names, values)), (1, 80, one_tile_max_c(zd)), True)
    elif not quick:
        for zd in (torch.bfloat16, torch.float32):
            others.append(_fused_variants(zd, torch.uint8, None, _MAIN, (), True, (STATS_BUFFER,), True))
        covering = [(zd, torch.uint8, None, _MAIN) for zd in LOGIT_DTYPES if zd not in (torch.bfloat16, torch.float32)]
        covering += [(torch.bfloat16, yd, None, _MAIN) for yd in LABEL_DTYPES if yd != torch.uint8]
        covering += [(torch.bfloat16, torch.uint8, wd, _MAIN) for wd in WEIGHT_DTYPES if wd is not None]
        for name, values in _AXES.items():
            for v in values:
                if v != _MAIN[name]:
                    covering.append((torch.bfloat16, torch.uint8, None, dict(_MAIN, **{name: v})))
                    if name == "REWEIGHT":  # the CB / class modes with soft and partial labels, fp64 too
                        covering.append((torch.float64, torch.float32, torch.float64, dict(_MAIN, **{name: v})))
        others += [_fused_variants(zd, yd, wd, axes, (1, 80, one_tile_max_c(zd)), False)
                   for zd, yd, wd, axes in covering]
    for spec in itertools.chain(() if exhaustive else _main_variants(quick), *others):
        key = compile_key(spec)
        if key not in seen:
            seen.add(key)
            yield spec
    for yd, cd in itertools.product(LABEL_DTYPES if not quick else (torch.uint8,), (torch.float32, torch.float64)):
        for rw in (STATS_MODES if not quick else (REWEIGHT_REBALANCE,)):
            hard, unknown = labels_kind(yd)
            types = dict(y_ptr=_PTR[yd], cp_ptr=_PTR[cd], stats_ptr=_PTR[cd], bmax_ptr="*i64", N="i32", C="i32",
                         stride_y="i32", chunk="i32", **{n: "fp32" for n in _FLOATS})
            ce = dict(REWEIGHT=rw, BATCH_MAX=True, HARD_LABELS=hard, HAS_UNKNOWN=unknown, BLOCK_N=1,
                      BLOCK_C=STATS_TILE)
            yield _spec_dict(_stats_kernel, f"stats-{_short(yd)}-{_short(cd)}-rw{rw}", types, ce, STATS_WARPS,
                             aligned=("C", "stride_y", "chunk"))
    for zd in LOGIT_DTYPES:
        cd = torch.float64 if zd == torch.float64 else torch.float32
        yield _spec_dict(_scale_kernel, f"scale-{_short(zd)}", dict(g_ptr=_PTR[zd], go_ptr=_PTR[cd], n="i64",
                                                                     iters="i32"), dict(BLOCK=SCALE_BLOCK), 4,
                         aligned=("n",))
