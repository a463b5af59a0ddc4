"""Host side of the Triton backend: the launcher of ``dbl::fused_triton`` (same contract as the
C++/CUDA op, see ``_spec.py``), its registration with the shared autograd glue, and the
device-side gradient scale.

Host cost per eager call on CUDA: one launch of ``_fused_kernel`` (the reduction of the partial
sums runs inside it), two allocations (gradient, loss), no JIT binding or autotuner lookup after
the first call of a specialisation (``launch`` keeps the compiled kernels), and the workspace
(partial sums, ticket counter) reused per device and stream.
"""
from __future__ import annotations

import functools
import typing
from typing import Optional

import torch
import triton
from torch.utils.weak import WeakIdKeyDictionary

from .. import ops
from .._spec import (INV_FREQ, MODE_ASYMMETRIC, MODE_CHECK_LABELS, MODE_FOCAL, MODE_FOCUS_GRAD, MODE_LOGIT_REG,
                     MODE_NORM, MODE_REDUCTION, MODE_REWEIGHT, NORM_BATCH, POS_W, REDUCTION_MEAN, REDUCTION_NONE,
                     REDUCTION_PER_CLASS, REDUCTION_SUM, REWEIGHT_NONE, SCALARS)
from .._tracing import is_eager
from ..reference import compute_dtype
from . import tuning
from ._math import INTERPRET, POW_ANY, POW_NONE, POW_ONE, POW_TWO, unit_scale
from .kernels import (ASYM_CLIP, ASYM_FOCUS_GRAD, ASYM_ON, KEY_MIN, OPTIONS, ROW_REB_SLOPE, STATS_BUFFER, STATS_GIVEN,
                      STATS_INLINE, STATS_MODES, STATS_NONE, SYNC_SLOTS, _fused_kernel, _scale_kernel, _stats_kernel)


def usable():
    """True when the kernels can run here: a CUDA device, or CPU tensors under TRITON_INTERPRET=1."""
    return INTERPRET or torch.cuda.is_available()


@functools.lru_cache(maxsize=None)
def _sm(index):
    """(SM count, registers per SM, threads per SM) of CUDA device ``index``."""
    p = torch.cuda.get_device_properties(index)
    return (p.multi_processor_count, getattr(p, "regs_per_multiprocessor", 65536),
            getattr(p, "max_threads_per_multi_processor", 2048))


def _device_index(device):
    return device.index if device.index is not None else torch.cuda.current_device()


def max_programs(device):
    """Most programs any launch here runs at once (32 CTAs per SM), the partial-sum buffer's size."""
    return _sm(_device_index(device))[0] * 32 if device.type == "cuda" else 64


def programs_cap(device, num_warps, n_regs=None):
    """The persistent grid's size: as many programs as fit on the GPU at once (by registers and
    threads; 16 // num_warps per SM before the register count is known), so no program waits for
    another to finish; 2 in the interpreter. ``tuning.tiles.programs`` overrides."""
    if tuning.tiles.programs:
        return tuning.tiles.programs
    if device.type != "cuda":
        return 2
    sms, regs, threads = _sm(_device_index(device))
    if n_regs is None:
        return sms * max(1, 16 // num_warps)
    return sms * tuning.blocks_per_sm(n_regs, num_warps, regs, threads)


class Persistent:
    """The grid of a persistent kernel: min(row tiles, programs that fit) x split."""

    def __init__(self, n_tiles, split=1):
        self.n_tiles, self.split = n_tiles, split

    def __call__(self, cap):
        return (max(1, min(self.n_tiles, cap // self.split)), self.split)


def pow_mode(focal, gamma):
    if not focal or gamma == 0.0:
        return POW_NONE
    return {1.0: POW_ONE, 2.0: POW_TWO}.get(float(gamma), POW_ANY)


def labels_kind(dtype):
    """(HARD_LABELS, HAS_UNKNOWN): integer labels are exactly 0/1/-1; only signed ones hold -1."""
    return not dtype.is_floating_point, dtype.is_floating_point or dtype.is_signed


try:
    _wrap = torch.library.wrap_triton
except AttributeError:  # torch < 2.6: a plain custom op, kernels launched directly
    _wrap = None


# ---------------------------------------------------------------------------------------------
# Launching. Eager CUDA calls keep each compiled kernel by its specialisation (the argument types
# and alignments Triton specialises on, the constexprs, num_warps) and launch it directly; the
# first call of a specialisation goes through the JIT (or the autotuner), which compiles it.
# ---------------------------------------------------------------------------------------------
_COMPILED = {}


@functools.lru_cache(maxsize=None)
def _backend():
    from triton.compiler import make_backend

    return make_backend(triton.runtime.driver.active.get_current_target())


def _specialisation(fn, args):
    """What Triton specialises a launch of ``fn`` on: constexpr values, and per runtime argument its
    type and alignment / divisibility (floats: fp64 by annotation, never specialised)."""
    from triton._C.libtriton import native_specialize_impl

    backend = _backend()
    return tuple(args[p.name] if p.is_constexpr else
                 None if isinstance(args[p.name], float) else
                 native_specialize_impl(backend, args[p.name], False, True, True) for p in fn.params)


def launch(kernel, grid, args, num_warps, eager):
    """Launch ``kernel`` (a JITFunction) with ``args`` (every parameter by name) on ``grid``: a
    tuple, or a Persistent grid sized from the compiled kernel's registers. The one entry point
    of every launch of this backend (tests count launches by wrapping it)."""
    device = args["y_ptr" if "y_ptr" in args else "g_ptr"].device
    if INTERPRET or not eager:
        if isinstance(grid, Persistent):
            grid = grid(programs_cap(device, num_warps))
        (_wrap(kernel) if _wrap is not None and not eager else kernel)[grid](**args, num_warps=num_warps)
        return
    index = _device_index(device)
    if index != torch.cuda.current_device():  # kernels load and launch on the current device
        with torch.cuda.device(index):
            _launch_compiled(kernel, grid, args, num_warps, device, index)
    else:
        _launch_compiled(kernel, grid, args, num_warps, device, index)


def _launch_compiled(kernel, grid, args, num_warps, device, index):
    """The compiled kernel of this specialisation (compiled on first sight without a launch: the
    grid may depend on its registers), launched as the JIT would, minus its argument binding."""
    key = (kernel, index, num_warps, _specialisation(kernel, args))
    compiled = _COMPILED.get(key)
    if compiled is None:
        compiled = kernel.warmup(**args, grid=(1,), num_warps=num_warps)
        compiled._init_handles()
        _COMPILED[key] = compiled
    if isinstance(grid, Persistent):
        grid = grid(programs_cap(device, num_warps, compiled.n_regs))
    values = [args[n] for n in kernel.arg_names]
    g = tuple(grid) + (1,) * (3 - len(grid))
    stream = triton.runtime.driver.active.get_current_stream(index)
    hooks = triton.knobs.runtime
    compiled.run(g[0], g[1], g[2], stream, compiled.function, compiled.packed_metadata,
                 compiled.launch_metadata(g, stream, *values), hooks.launch_enter_hook, hooks.launch_exit_hook,
                 *values)


_TUNED = {}


def autotuned_meta(frozen, key, grid, args, eager):
    """(meta, num_warps) the autotuner picks among ``frozen`` configs (tuning.freeze) for ``key``
    (the constexprs, dtypes and N bucket), once per key and device: its first call benchmarks the
    configs (and launches the best one, which the caller's own launch then repeats with the grid
    every later call gets). Under tracing: None, the autotuner launched into the graph."""
    key = (frozen, key, torch.cuda.current_device())
    best = _TUNED.get(key)
    if best is not None:
        return best
    device = args["z_ptr"].device
    tuner = tuning.autotuner(frozen, key[1][-1])

    def tuner_grid(meta):
        return grid(meta)(programs_cap(device, 4))

    if not eager:
        (_wrap(tuner) if _wrap is not None else tuner)[tuner_grid](**args)
        return None
    tuner[tuner_grid](**args)
    best = _TUNED[key] = (dict(tuner.best_config.kwargs), tuner.best_config.num_warps)
    return best


# ---------------------------------------------------------------------------------------------
# Cached device state: the kernel's class table and the per-stream workspace.
# ---------------------------------------------------------------------------------------------
_TABLES = WeakIdKeyDictionary()


def options(dtype, map_alpha, map_beta, map_gamma, cb_log_beta, neg_scale, gamma, scale, w_max, gamma_neg=0.0,
            clip=0.0, smoothing=0.0):
    """The kernels' scalar options (kernels.OPTIONS), derived in float64."""
    unit = unit_scale(dtype)
    return (map_alpha, map_beta * map_gamma * unit, -map_beta * unit * w_max, w_max, neg_scale * unit,
            1.0 / neg_scale, gamma, gamma / unit, scale / unit, cb_log_beta, gamma_neg, clip, 1.0 - smoothing,
            0.5 * smoothing)


def kernel_table(class_params, opts, map_beta, cached):
    """The class table the kernels read (kernels.TABLE_ROWS rows of C, then the options ``opts``):
    built once per class_params tensor, version and options where ``cached`` (eager, not capturing
    a CUDA graph); a table cached before a capture serves it too."""
    cache = not class_params.is_inference()  # inference tensors have no version counter
    if cache and (cached or is_eager(class_params)):
        entry = _TABLES.get(class_params)
        if entry is not None and entry[0] == (class_params._version, opts):
            return entry[1]
    slope = class_params[INV_FREQ] * (-map_beta * unit_scale(class_params.dtype))
    tail = torch.empty((len(opts),), dtype=class_params.dtype, device=class_params.device)
    for k, value in enumerate(opts):  # fills, not a host-to-device copy: capturable
        tail[k] = value
    table = torch.cat([class_params[:ROW_REB_SLOPE].reshape(-1), slope, class_params[POS_W], tail])
    if cache and cached:
        _TABLES[class_params] = ((class_params._version, opts), table)
    return table


class _Workspace:
    """Partial sums (one per program) and the int64 sync slots (ticket counter) of the in-kernel
    reduction. Kernels leave the counter at 0, so one workspace serves every call on its stream."""

    def __init__(self, device, dtype, n_partials):
        self.partials = torch.empty((n_partials,), dtype=dtype, device=device)
        self.sync = torch.zeros((SYNC_SLOTS,), dtype=torch.int64, device=device)


_WORKSPACES = {}


def workspace(device, dtype, n_partials, cached):
    """The workspace of the current stream: cached where ``cached`` (eager, not capturing), else
    fresh and part of the graph (a CUDA graph's replays reset its counter; sharing cached memory
    between graphs, or a graph and eager calls, would race)."""
    if not cached:
        return _Workspace(device, dtype, n_partials)
    if device.type == "cuda":
        index = _device_index(device)
        key = (index, triton.runtime.driver.active.get_current_stream(index), dtype)
    else:
        key = (device.type, None, dtype)
    ws = _WORKSPACES.get(key)
    if ws is None or ws.partials.numel() < n_partials:
        ws = _WORKSPACES[key] = _Workspace(device, dtype, n_partials)
    return ws


# ---------------------------------------------------------------------------------------------
# The op.
# ---------------------------------------------------------------------------------------------
class _Plan(typing.NamedTuple):
    configs: Optional[tuple]   # the autotune set [(constexprs, num_warps)], or None with fixed meta
    frozen: Optional[tuple]    # the same, hashable (tuning.freeze)
    meta: Optional[dict]       # fixed tile constexprs (tuning.tiles set them), or None
    wide: bool                 # the column-loop regime
    widths: tuple              # every BLOCK_C the launch may get
    min_rows: int              # the fewest rows a tile may hold


@functools.lru_cache(maxsize=1024)
def _plan(n_cols, dtype, need_grad, light, tiles):
    """The tile choices of a row of ``n_cols`` logits of ``dtype`` (``tiles``: tuning.tiles, part
    of the key so a test's force_tiles gets its own plans). Cached: building the autotune set
    costs more host time than the launch itself."""
    configs = meta = None
    wide = n_cols > tuning.one_tile_max_c(dtype)
    if not wide:
        if tiles.row_tile_elems is None:
            configs = tuning.row_configs(n_cols, dtype, need_grad, light)
        else:
            block_c = tiles.row_block_c or tuning.column_tiles(n_cols, 32 * tuning.vec(dtype))[-1]
            meta = dict(BLOCK_N=max(1, tiles.row_tile_elems // block_c), BLOCK_C=block_c)
    elif tiles.loop_block_c is None:
        configs = tuning.loop_configs(dtype, light)
    else:
        meta = dict(BLOCK_N=max(1, (tiles.loop_tile_elems or 2 * tiles.loop_block_c) // tiles.loop_block_c),
                    BLOCK_C=tiles.loop_block_c)
    if configs is not None:
        return _Plan(tuple(configs), tuning.freeze(configs), None, wide, tuple(c["BLOCK_C"] for c, _ in configs),
                     tuning.min_rows(configs))
    return _Plan(None, None, meta, wide, (meta["BLOCK_C"],), meta["BLOCK_N"])


def _fixed_warps(meta, dtype):
    """Enough warps for <= 16 (fp64: 4) elements per thread."""
    return min(tuning.max_warps(dtype), max(4, meta["BLOCK_N"] * meta["BLOCK_C"] // (32 * tuning.per_thread(dtype))))


def _fused(logits: torch.Tensor, labels: torch.Tensor, weight: Optional[torch.Tensor], class_params: torch.Tensor,
           aux: torch.Tensor, reweight_mode: int, weight_norm: int, logit_reg: bool, focal: bool, reduction: int,
           map_alpha: float, map_beta: float, map_gamma: float, cb_log_beta: float, neg_scale: float, gamma: float,
           scale: float, w_max: float, need_grad: bool, csr=None, row_stats=None, asym=0, gamma_neg=0.0, clip=0.0,
           smoothing=0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The launch. ``csr``: (crow_indices, col_indices) of CSR labels (``labels``: their values);
    ``row_stats``: contract v2's; ``asym``: the kernels' ASYM flags."""
    if reduction not in (REDUCTION_NONE, REDUCTION_SUM, REDUCTION_MEAN, REDUCTION_PER_CLASS):
        raise ValueError(f"dbl::fused_triton: reduction must be 0, 1, 2 or 4 (3, a mean counted by the op, is "
                         f"the CPU op's), got {reduction}")
    if reduction == REDUCTION_PER_CLASS:  # the column sums of the element losses, in row order
        loss, grad = _fused(logits, labels, weight, class_params, aux, reweight_mode, weight_norm, logit_reg, focal,
                            REDUCTION_NONE, map_alpha, map_beta, map_gamma, cb_log_beta, neg_scale, gamma, scale,
                            w_max, need_grad, csr, row_stats, asym, gamma_neg, clip, smoothing)
        return loss.sum(dim=0), grad
    n_rows, n_cols = logits.shape
    dtype = compute_dtype(logits)
    device = logits.device
    eager = is_eager(logits)
    cached = eager and not (device.type == "cuda" and torch.cuda.is_current_stream_capturing())
    reduce_none = reduction == REDUCTION_NONE
    grad = (torch.empty((n_rows, n_cols), dtype=logits.dtype, device=device) if need_grad
            else logits.new_empty((0,)))
    if n_rows == 0 or n_cols == 0:
        if reduce_none:
            return torch.empty((n_rows, n_cols), dtype=dtype, device=device), grad
        return aux[0] * 0, grad  # a sum of nothing (the mean's scale is finite: at most 1)
    if n_cols > 1 and logits.stride(1) != 1:
        logits = logits.contiguous()
    if csr is not None:
        crow, col, stride_y = csr[0].contiguous(), csr[1].contiguous(), 0
        labels = labels.contiguous()
    else:
        if n_cols > 1 and labels.stride(1) != 1:
            labels = labels.contiguous()
        crow = col = None  # unread: the workspace's int64 slots stand in (one specialisation)
        stride_y = labels.stride(0)
    if weight is None:
        wt, stride_wn, stride_wc = class_params, 0, 0
    else:
        wt = weight.expand(n_rows, n_cols)
        stride_wn, stride_wc = wt.stride()
    hard, has_unknown = labels_kind(labels.dtype)
    needs_stats = reweight_mode in STATS_MODES
    if needs_stats and csr is not None and row_stats is None:
        raise ValueError("dbl::fused_triton: CSR labels with a row-dependent re-weighting need row_stats (2 x N)")
    given = needs_stats and row_stats is not None
    by_batch = weight_norm == NORM_BATCH and needs_stats and not given
    opts = options(dtype, map_alpha, map_beta, map_gamma, cb_log_beta, neg_scale, gamma, scale, w_max, gamma_neg,
                   clip, smoothing)
    table = kernel_table(class_params, opts, map_beta, cached)
    tiles = tuning.tiles
    plan = _plan(n_cols, logits.dtype, need_grad, tuning.light(labels.dtype, weight is not None, reweight_mode, asym),
                 tiles)
    meta = plan.meta
    split, chunk = 1, n_cols
    if plan.wide:  # too few row tiles to fill the GPU: split the columns too
        row_tiles = -(-n_rows // plan.min_rows)
        target = 4 * (_sm(_device_index(device))[0] if device.type == "cuda" else 0)
        split = tiles.split or max(1, min(-(-target // row_tiles), -(-n_cols // tiles.chunk_align)))
        chunk = -(-n_cols // split)
        chunk = -(-chunk // tiles.chunk_align) * tiles.chunk_align
        split = -(-n_cols // chunk)
    stats_mode = STATS_NONE
    if given:
        stats_mode = STATS_GIVEN
    elif needs_stats:
        stats_mode = STATS_BUFFER if (split > 1 or by_batch) else STATS_INLINE
    pow_ = pow_mode(focal, gamma)
    # pairs of column tiles for the heavy elements static_check covers (no weight tensor, fp32 math)
    heavy = (reweight_mode != REWEIGHT_NONE or pow_ != POW_NONE) and weight is None and dtype != torch.float64
    even = tuning.even_c(n_cols, chunk, plan.widths, heavy)
    consts = dict(REWEIGHT=reweight_mode, NORM=weight_norm, LOGIT_REG=bool(logit_reg),
                  POW=pow_, REDUCE_NONE=reduce_none, HAS_GRADIENTS=bool(need_grad),
                  HAS_WEIGHT=weight is not None, HARD_LABELS=hard, HAS_UNKNOWN=has_unknown, STATS=stats_mode,
                  ASYM=asym, CSR=csr is not None, EVEN_C=even)
    ws = workspace(device, dtype, max(max_programs(device), tiles.programs or 0), cached)
    out = (torch.empty((n_rows, n_cols), dtype=dtype, device=device) if reduce_none
           else torch.empty((), dtype=dtype, device=device))
    stats, bmax, stats_split = ws.partials, ws.sync, split
    if given:
        stats, stats_split = row_stats.to(dtype).contiguous(), 1
    elif stats_mode == STATS_BUFFER:
        stats_split = 1 if by_batch else split
        stats, bmax = _run_stats(labels, table, reweight_mode, by_batch, hard, has_unknown, stats_split,
                                 chunk if stats_split > 1 else n_cols, dtype, eager, opts)
    if crow is None:
        crow = col = ws.sync
    args = dict(z_ptr=logits, y_ptr=labels, crow_ptr=crow, col_ptr=col, wt_ptr=wt, cp_ptr=table, aux_ptr=aux, stats_ptr=stats, bmax_ptr=bmax,
                part_ptr=ws.partials, sync_ptr=ws.sync, out_ptr=out, grad_ptr=grad, N=n_rows, C=n_cols,
                stride_z=logits.stride(0), stride_y=stride_y, stride_wn=stride_wn, stride_wc=stride_wc,
                chunk=chunk, stats_split=stats_split, **dict(zip(OPTIONS, opts)), **consts)

    def grid(meta):
        return Persistent(-(-n_rows // meta["BLOCK_N"]), split)

    if meta is None:
        if INTERPRET:
            meta, num_warps = plan.configs[0]
        else:
            key = (tuple(consts.values()), n_cols, logits.dtype, labels.dtype, wt.dtype, tuning.n_bucket(n_rows))
            picked = autotuned_meta(plan.frozen, key, grid, args, eager)
            if picked is None:  # traced: the autotuner launched it
                return out, grad
            meta, num_warps = picked
    else:
        meta = dict(meta, ONE_TILE=meta["BLOCK_C"] >= n_cols,
                    C_TILES=0 if plan.wide or not need_grad else tuning.c_tiles(n_cols, meta["BLOCK_C"]))
        num_warps = _fixed_warps(meta, logits.dtype)
    args.update(meta)
    launch(_fused_kernel, grid(meta), args, num_warps, eager)
    return out, grad


def _run_stats(labels, table, reweight_mode, by_batch, hard, has_unknown, split, chunk, dtype, eager, opts):
    """Row statistics of each column chunk (and the batch-max key for by_batch) in their own pass."""
    n_rows, n_cols = labels.shape
    tiles = tuning.tiles
    block_c = tuning.column_tiles(min(chunk, n_cols), tiles.stats_block_c)[-1]
    block_n = max(1, tuning.STATS_TILE // block_c) if not INTERPRET else max(1, tiles.stats_block_c // block_c)
    stats = torch.empty((2, split, n_rows), dtype=dtype, device=labels.device)
    bmax = torch.full((1,), KEY_MIN, dtype=torch.int64, device=labels.device) if by_batch else stats
    args = dict(y_ptr=labels, cp_ptr=table, stats_ptr=stats, bmax_ptr=bmax, N=n_rows, C=n_cols,
                stride_y=labels.stride(0), chunk=chunk, **dict(zip(OPTIONS, opts)),
                REWEIGHT=reweight_mode, BATCH_MAX=by_batch, HARD_LABELS=hard, HAS_UNKNOWN=has_unknown,
                BLOCK_N=block_n, BLOCK_C=block_c)
    launch(_stats_kernel, Persistent(-(-n_rows // block_n), split), args, tuning.STATS_WARPS, eager)
    return stats, bmax


def scale_grad(grad, grad_output):
    """In place ``grad *= grad_output`` for a 1-element ``grad_output``, read on the device: no host
    sync, and when it is exactly 1.0 the kernel returns before touching ``grad``."""
    if (grad_output.numel() != 1 or grad_output.device != grad.device or not grad.is_contiguous()
            or grad.numel() == 0):
        grad.mul_(grad_output)
        return
    n = grad.numel()
    blocks = -(-n // tuning.SCALE_BLOCK)
    programs = min(blocks, max_programs(grad.device) if grad.is_cuda else 4)
    iters = -(-blocks // programs)
    launch(_scale_kernel, (programs,), dict(g_ptr=grad, go_ptr=grad_output, n=n, iters=iters,
                                            BLOCK=tuning.SCALE_BLOCK), 4, is_eager(grad))


_SCALAR = {name: i for i, name in enumerate(SCALARS)}


def _fused_v2(logits: torch.Tensor, labels: torch.Tensor, crow_indices: Optional[torch.Tensor],
              col_indices: Optional[torch.Tensor], weight: Optional[torch.Tensor], class_params: torch.Tensor,
              aux: torch.Tensor, row_stats: Optional[torch.Tensor], modes: list[int], scalars: list[float],
              need_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The op of kernel contract v2 (_spec.py): unpacks modes and scalars for the launcher. CSR
    labels with a row-dependent re-weighting need ``row_stats`` (the kernel reads no statistics
    from CSR; the loss hands them down); the label check is the CPU op's."""
    if (crow_indices is None) != (col_indices is None):
        raise ValueError("dbl::fused_triton: pass both crow_indices and col_indices (CSR labels) or neither")
    if modes[MODE_CHECK_LABELS]:
        raise ValueError("dbl::fused_triton: check_labels is not implemented (modes[5] must be 0)")
    s = [scalars[_SCALAR[name]] for name in ("map_alpha", "map_beta", "map_gamma", "cb_log_beta", "neg_scale",
                                             "gamma", "scale", "w_max")]
    asym = 0
    if modes[MODE_ASYMMETRIC]:
        asym = (ASYM_ON | (ASYM_CLIP if scalars[_SCALAR["clip"]] > 0 else 0)
                | (ASYM_FOCUS_GRAD if modes[MODE_FOCUS_GRAD] else 0))
    csr = None if crow_indices is None else (crow_indices, col_indices)
    return _fused(logits, labels, weight, class_params, aux, modes[MODE_REWEIGHT], modes[MODE_NORM],
                  bool(modes[MODE_LOGIT_REG]), bool(modes[MODE_FOCAL]), modes[MODE_REDUCTION], *s, need_grad, csr,
                  row_stats, asym, scalars[_SCALAR["gamma_neg"]], scalars[_SCALAR["clip"]],
                  scalars[_SCALAR["smoothing"]])


if _wrap is not None:
    fused = torch.library.triton_op("dbl::fused_triton", _fused_v2, mutates_args=())
else:
    fused = torch.library.custom_op("dbl::fused_triton", _fused_v2, mutates_args=())
ops.register(fused, device_scale=scale_grad, features=frozenset({"asymmetric", "per_class", "csr", "row_stats"}),
             eager_impl=_fused_v2)
