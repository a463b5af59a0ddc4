"""Compile every GPU kernel specialisation for sm_80 and sm_90 on a machine without a GPU, and read
the machine code: registers, spills / local memory, shared memory, widest global load and store,
and on the main paths the SASS instructions and MUFU operations issued per logits element.

    python benchmarks/static_check.py [--out DIR] [--arch 80 90] [--quick] [--no-budget] [--only RE]

Triton kernels are compiled ahead of time (``triton.compile(ASTSource(...), target=GPUTarget(...))``
with the 16-byte divisibility hints the runtime infers for aligned tensors); the CUDA sources in
``csrc/*.cu`` go through ``nvcc -cubin`` (beside the Triton compiles). The tools shipped in the triton
wheel read them: ``cuobjdump --dump-resource-usage`` (and ``--dump-sass``, ``--dump-elf`` for the
CUDA cubins' jump tables); the Triton kernels' machine code is disassembled 64 kernels per
``nvdisasm -b SMxx`` call, since each call costs ~0.5 s of start-up (as does each cuobjdump --dump-sass).
``--quick``: the main paths with uint8 labels and the gradient, and the helper kernels; ``--only RE``:
the Triton specialisations whose name matches (e.g. ``--only 'rw1-.*grad1-C80' --arch 90``).

Exits non-zero when anything fails to compile, a kernel spills on sm_90 (sm_80 spills are noted in
the status) or uses local memory, a main path
(or the column-split variants) does not read its logits with 16-byte loads, or a main path on
sm_90 issues more than ``BUDGET`` SASS instructions (Triton 36, CUDA 48) or MUFU operations (5) per
element (``--no-budget``: report those, do not fail). The budget binds ``BUDGET_LOSSES`` (DB-focal,
CB-focal, BCE); the asymmetric main paths (ASL, DB-ASL) are counted and reported beside them. Writes ``static_check.md`` / ``.json`` to ``--out``.

Instructions per element (``sass_per_element``): thread-instruction issue slots per logits element,
``32 * (instructions one warp issues over its program) / (logits elements per warp)``, so idle and
padded lanes cost what they cost on the GPU. ``benchmarks/sass_cfg.py`` parses the SASS into basic
blocks and natural loops and counts one iteration of each loop (its own instructions, inner loops
excluded) and the straight-line code (outside every loop, amortised over the program); see its
docstring for the rules (branches, ``BSSY``/``BSYNC``, calls, jump tables, the padding after the
last ``EXIT``). A model per kernel gives each loop's trip count per warp and the elements per warp:

* Triton ``_fused_kernel`` (from its constexprs and the problem: C = 80 or 8192 with the targets'
  N = 1,048,576 or 8,192 rows, so no column split): the persistent grid of an H100/H200 (132 SMs x the
  programs that fit by the kernel's registers and warps) shares the row tiles, so each program
  runs ceil(tiles / programs) of them and its straight-line code spreads over those (one tile per
  program, the costliest case, where the registers are unknown), ``tiles * BLOCK_N * C / num_warps``
  elements per warp. Loops: the persistent row-tile loop; inside it, unless the row is one tile
  (``ONE_TILE``) or unrolled (``C_TILES``), the statistics loop (``STATS`` inline,
  ``C / (kernels.stats_width() BLOCK_C)`` trips a tile) and the loss loop (``C / BLOCK_C``); then the sum
  over the partials (1 trip). Where C is a multiple of the tile widths the masked tails (the blocks
  with guarded loads) never run and are off the counted path. Another loop structure is reported as
  a model mismatch.
* CUDA: ``CUDA_MAIN`` below, one row per fixed vector-path kernel (loss x logits dtype x gradient;
  uint8 and bool labels share a kernel), modelled by ``cuda_model``: the geometry of
  ``csrc/dbl_plan.h`` for the same targets' N (C = 80: 1,048,576 rows, 204 per item, one thread per
  row in the statistics; C = 8192: 8,192 rows, 2 per item) on the grid ``dbl_cuda.cu`` launches
  (the blocks resident at once: 132 SMs x 3), each block looping over its share of the items, the
  loops of ``csrc/dbl_block.h`` told apart by what they hold.

Where branches inside a loop give several paths the longest one is counted (``path`` = ``max``, with
the shortest path's figure in ``sass_per_element_min``); where every counted loop has one path,
``path`` = ``exact`` (the straight-line code always takes its longest path: the one through the
loops). Division slow paths (``CALL``) are left off when a path avoids them. MUFU (``ex2``, ``lg2``,
``rcp``, ``rsq``, ``sin``, ``cos``, ``tanh``, ...) is counted along the longest path. A loop that LLVM or
ptxas unrolls by k runs 1/k of the source trip count: the models assume the loss and statistics
loops are not unrolled (true of today's SASS; a test shows how an unrolled loop reads).

Reading the table: ``regs`` are registers per thread (<= 64 keeps full occupancy at 1024 threads/SM
on sm_80/sm_90 with 255 the hard cap), ``spill``/``local`` must be 0 (sm_80: a few spilled bytes
are noted in the status), ``ld``/``st`` are the widest
global load/store in bits (128 = 16-byte vector access; a bf16 row read with 128-bit loads moves 8
logits per instruction).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import sass_cfg  # noqa: E402
from kernel_models import (CUDA_MAIN, Estimate, _cdiv, _dead_tails, _tail_loads, cuda_geometry,  # noqa: E402,F401
                           cuda_model, triton_model, walk)

# Per logits element on the main paths, enforced on BUDGET_ARCH (see the module docstring).
BUDGET = dict(triton=36, cuda=48, mufu=5)
BUDGET_ARCH = 90
# The losses the budget binds (the authors' DB-focal configs, CB-focal, plain BCE); the asymmetric
# forms (ASL, DB-ASL) are counted and reported beside them, not failed.
BUDGET_LOSSES = ("db-focal", "cb-focal", "bce")


@dataclass
class Row:
    kernel: str
    specialisation: str
    target: str
    ok: bool = False
    regs: int | None = None
    stack: int | None = None
    spill: int | None = None
    local: int | None = None
    shared: int | None = None
    widest_load: int | None = None
    widest_store: int | None = None
    main_path: bool = False
    loss: str | None = None
    C: int | None = None
    sass_per_element: float | None = None
    sass_per_element_min: float | None = None
    mufu_per_element: float | None = None
    path: str | None = None          # "exact" or "max" (see the module docstring)
    model: str | None = None         # the trip-count model behind the figures
    over_budget: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # reported, not failed


def cuobjdump():
    try:
        import triton

        path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    return shutil.which("cuobjdump")


_WIDTH = {"": 32, ".8": 8, ".U8": 8, ".S8": 8, ".U16": 16, ".S16": 16, ".16": 16, ".64": 64, ".128": 128}


def _access_widths(sass, op):
    """Widths in bits of every global load (LDG) or store (STG) in a SASS listing."""
    widths = []
    for m in re.finditer(rf"\b{op}\.E((?:\.[A-Z0-9]+)*)", sass):
        width = 32
        for mod in m.group(1).split(".")[1:]:
            width = _WIDTH.get("." + mod, width)
        widths.append(width)
    return widths


_USAGE = re.compile(r"Function ([^\s:]+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def read_cubin(path, tool, elf=False, sass=True):
    """{function: {regs, stack, shared, local, loads, stores, sass, table}} from one cubin (``table``:
    its jump-table words, read only with ``elf``; ``sass=False``: resource usage only, ~1000x faster)."""
    out = subprocess.run([tool, "--dump-resource-usage"] + (["--dump-sass"] if sass else []) + [str(path)],
                         capture_output=True, text=True, check=True).stdout
    funcs = {m.group(1): dict(regs=int(m.group(2)), stack=int(m.group(3)), shared=int(m.group(4)),
                              local=int(m.group(5)), loads=[], stores=[], sass="", table=None)
             for m in _USAGE.finditer(out)}
    for block in re.split(r"\n\s*Function : ", out)[1:]:
        name = block.split()[0]
        if name in funcs:
            funcs[name].update(loads=_access_widths(block, "LDG"), stores=_access_widths(block, "STG"),
                               sass=block[len(name):])
    if elf:
        dump = subprocess.run([tool, "--dump-elf", str(path)], capture_output=True, text=True, check=True).stdout
        for name, words in sass_cfg.constant_tables(dump).items():
            if name in funcs:
                funcs[name]["table"] = words
    return funcs


def disassemble(texts, arch, tool, workdir):
    """[[Instr]] of several functions' machine code in one ``nvdisasm -b`` call (it costs ~0.5 s of
    start-up whatever it reads; cuobjdump pays that per cubin)."""
    disasm = Path(tool).with_name("nvdisasm")
    starts, blob = [], b""
    for text in texts:
        starts.append(len(blob))
        blob += text
    raw = Path(workdir) / f"raw{os.getpid()}_{arch}.bin"
    raw.write_bytes(blob)
    # Triton compiles sm_90 as sm_90a (arch-specific features allowed)
    out = subprocess.run([str(disasm if disasm.exists() else "nvdisasm"), "-b", f"SM{arch}" + ("a" if arch >= 90 else ""),
                          str(raw)], capture_output=True, text=True, check=True).stdout
    raw.unlink()
    return sass_cfg.split_raw(out, starts)


_SPILL = re.compile(r"Function properties for (\S+)\s*\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores")


def ptxas_spills(report):
    """{function: (stack frame bytes, spill-store bytes)} from `ptxas -v` output."""
    return {m.group(1): (int(m.group(2)), int(m.group(3))) for m in _SPILL.finditer(report)}


def _ptx_spill_bytes(ptx, arch, workdir):
    """Spill stores of a Triton kernel, from the ptxas triton itself uses for ``arch`` (-v)."""
    from triton.backends.nvidia.compiler import get_ptxas

    target = re.search(r"^\.target\s+(\w+)", ptx, flags=re.M)
    src = Path(workdir) / f"k{os.getpid()}_{arch}.ptx"
    src.write_text(ptx)
    proc = subprocess.run([get_ptxas(arch).path, f"-arch={target.group(1) if target else f'sm_{arch}'}", "-v",
                           str(src), "-o", os.devnull], capture_output=True, text=True)
    found = ptxas_spills(proc.stderr)
    return max((spill for _, spill in found.values()), default=None)


def _fill(row, info, spill_bytes, wide_loads):
    """spill_bytes: spill stores reported by ptxas (a stack frame alone is the call ABI of a
    library function such as fp64 pow, not a register spill)."""
    row.ok = True
    row.regs, row.local, row.shared = info["regs"], info["local"], info["shared"]
    row.stack = info["stack"]
    row.spill = spill_bytes if spill_bytes is not None else info["stack"]
    row.widest_load = max(info["loads"], default=0)
    row.widest_store = max(info["stores"], default=0)
    if row.spill or row.local:
        text = f"spills: {row.spill} B spill stores, local {row.local} B"
        # sm_90 (H100 / H200, the machines the budget and the targets are set on) must not spill;
        # spills on other targets are reported in the status, not failed
        if row.target != f"sm_{BUDGET_ARCH}" and not row.local:
            row.notes.append(text)
        else:
            row.problems.append(text)
    if wide_loads and row.widest_load < 128:
        row.problems.append(f"main path reads logits {row.widest_load}-bit wide, not 128")


# ----------------------------------------------------------------------------------------------
# Instructions per element
# ----------------------------------------------------------------------------------------------
def budget(row, estimate, limit):
    """Fill the per-element figures of a main-path row; over budget only on BUDGET_ARCH, where a
    loop structure the models do not know fails too (elsewhere it is noted: no figure there)."""
    if estimate.problems:
        if row.target == f"sm_{BUDGET_ARCH}":
            row.problems += estimate.problems
        else:
            row.notes += [f"no figure: {p}" for p in estimate.problems]
        return
    row.sass_per_element = round(estimate.sass, 2)
    row.sass_per_element_min = round(estimate.sass_min, 2)
    row.mufu_per_element = round(estimate.mufu, 2)
    row.path = "exact" if estimate.exact else "max"
    row.model = "; ".join(estimate.notes)
    if row.target == f"sm_{BUDGET_ARCH}":
        over = ([f"{estimate.sass:.1f} SASS/element > {limit}"] if estimate.sass > limit else []) + \
            ([f"{estimate.mufu:.2f} MUFU/element > {BUDGET['mufu']}"] if estimate.mufu > BUDGET["mufu"] else [])
        if row.loss in BUDGET_LOSSES:
            row.over_budget += over
        else:
            row.notes += [f"over the budget (reported, not enforced for {row.loss}): {m}" for m in over]


# ----------------------------------------------------------------------------------------------
# Triton
# ----------------------------------------------------------------------------------------------
_SPECS = None


def _specs(quick, only=None):
    global _SPECS
    if _SPECS is None:
        from dbl_kernels import triton_kernel

        _SPECS = [s for s in triton_kernel.specialisations(quick=quick) if not only or re.search(only, s["name"])]
    return _SPECS


def _compile_one(job):
    """One Triton specialisation for one arch (runs in a worker process): (row, resource usage,
    spill bytes, machine code), or (row with the failure, None, None, None)."""
    index, arch, quick, only, tool, workdir = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    spec = _specs(quick, only)[index]
    problem = spec.get("problem") or {}
    row = Row(spec["kernel"], spec["name"], f"sm_{arch}", main_path=spec.get("main_path", False),
              loss=problem.get("loss"), C=problem.get("C"))
    try:
        src = ASTSource(fn=spec["fn"], signature=spec["signature"], constexprs=spec["constexprs"],
                        attrs=spec["attrs"])
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(spec.get("options", {})))
        cubin = Path(workdir) / f"t{index}_{arch}.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        ((name, info),) = read_cubin(cubin, tool, sass=False).items()
        cubin.unlink()
        spill = _ptx_spill_bytes(compiled.asm["ptx"], arch, workdir) if info["stack"] else 0
        return index, row, info, spill, sass_cfg.elf_texts(compiled.asm["cubin"])[name]
    except Exception as exc:  # a compile failure is a finding, not a crash of the check
        row.problems.append(f"compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return index, row, None, None, None


def _read_batch(job):
    """Load widths and, on main paths, instructions per element of compiled kernels of one arch."""
    arch, quick, only, tool, workdir, compiled = job
    rows = []
    for (index, row, info, spill, _), instrs in zip(compiled, disassemble([c[4] for c in compiled], arch, tool,
                                                                           workdir)):
        spec = _specs(quick, only)[index]
        ops = "\n".join(ins.op for ins in instrs)
        _fill(row, dict(info, loads=_access_widths(ops, "LDG"), stores=_access_widths(ops, "STG")), spill,
              spec.get("wide_loads", False))
        if row.main_path:
            budget(row, walk(sass_cfg.analyse(instrs, cold=_tail_loads if _dead_tails(spec) else None),
                             *triton_model(spec, row.regs)), BUDGET["triton"])
        rows.append((index, row))
    return rows


def check_triton(archs, tool, quick, only, workdir, jobs):
    """Compile every specialisation (a process pool), then read their SASS in batches per arch."""
    try:
        import triton  # noqa: F401

        count = len(_specs(quick, only))
    except ImportError as exc:
        return [Row("triton", f"import failed: {exc}", "-", problems=[f"cannot import: {exc}"])]
    work = [(i, arch, quick, only, tool, workdir) for i in range(count) for arch in archs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max(1, jobs), mp_context=multiprocessing.get_context("fork")) as pool:
        done = list(pool.map(_compile_one, work, chunksize=4))
        batches = []
        for arch, start in itertools.product(archs, range(0, len(done), _BATCH)):
            part = [d for d in done[start:start + _BATCH] if d[2] is not None and d[1].target == f"sm_{arch}"]
            if part:
                batches.append((arch, quick, only, tool, workdir, part))
        read = {(index, row.target): row for rows in pool.map(_read_batch, batches) for index, row in rows}
    return [read.get((index, row.target), row) for index, row, *_ in done]


_BATCH = 64  # kernels per nvdisasm call


# ----------------------------------------------------------------------------------------------
# CUDA (nvcc)
# ----------------------------------------------------------------------------------------------
# what torch's CUDAExtension adds (setup.py builds with these): no implicit half/bf16 conversions
TORCH_NVCC_FLAGS = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__", "--expt-relaxed-constexpr"]
MAIN_CUDA_PATTERN = re.compile(r"(bf16|bfloat16|float\b|f32|__nv_bfloat16)", re.I)
MAIN_CUDA_KERNEL = re.compile(r"fused_kernel<[^,<>]+, (?!1,)\d+, ")

def _demangle(names):
    tool = shutil.which("cu++filt") or shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def start_cuda(archs, workdir):
    """Start nvcc for every csrc/*.cu and arch (they run beside the Triton compiles)."""
    nvcc = shutil.which("nvcc")
    jobs = []
    for source in sorted((ROOT / "csrc").glob("*.cu")):
        for arch in archs:
            if not nvcc:
                jobs.append((source, arch, None, None))
                continue
            cubin = Path(workdir) / f"{source.stem}_{arch}.cubin"
            cmd = [nvcc, "-cubin", f"-arch=sm_{arch}", "-O3", "-std=c++17", *TORCH_NVCC_FLAGS,
                   "-I", str(ROOT / "csrc"), "-Xptxas", "-v", str(source), "-o", str(cubin)]
            jobs.append((source, arch, cubin, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                               text=True)))
    return jobs


def check_cuda(jobs, tool):
    rows = []
    if any(proc is None for *_, proc in jobs):
        print("static_check: nvcc not found, CUDA kernels not checked", file=sys.stderr)
    for source, arch, cubin, proc in jobs:
        if proc is None:
            rows.append(Row(source.name, "nvcc missing", "-", ok=True))
            continue
        stdout, stderr = proc.communicate()
        if proc.returncode:
            rows.append(Row(source.name, "nvcc failed", f"sm_{arch}",
                            problems=[stderr.strip().splitlines()[-1][:300] if stderr else "nvcc failed"]))
            continue
        funcs = read_cubin(cubin, tool, elf=True)
        spills = ptxas_spills(stdout + stderr)
        pretty = _demangle(list(funcs))
        for name, info in sorted(funcs.items()):
            label = pretty[name]
            # The generic kernel (one element per thread, every option at run time) serves rare
            # configurations and fp64; the main paths are the fixed, vectorised specialisations.
            main = bool(MAIN_CUDA_KERNEL.search(label)) and bool(MAIN_CUDA_PATTERN.search(label)) \
                and "double" not in label
            row = Row(source.name, label[:120], f"sm_{arch}", main_path=main)
            _fill(row, info, spills.get(name, (None, None))[1], main)
            rows.append(row)
        rows += cuda_budget_rows(source.name, arch, funcs, pretty)
    return rows


def cuda_budget_rows(source, arch, funcs, pretty):
    """One row per CUDA_MAIN entry whose kernels are in this cubin; on BUDGET_ARCH only: ptxas for
    sm_80 moves the element step into a subroutine that the item loop calls, a layout the model
    does not read (registers, spills and load widths are checked on every arch in the kernel rows)."""
    rows, costs = [], {}
    if arch != BUDGET_ARCH:
        return rows
    for name, n_cols, parts in CUDA_MAIN:
        found = [[f for f in funcs if re.search(pattern, pretty[f])] for pattern, _ in parts]
        if not any(found):
            continue
        first = funcs[found[0][0]] if found[0] else next(iter(funcs.values()))
        row = Row(source, f"main: {name}", f"sm_{arch}", ok=True, main_path=True, loss=name.split()[0], C=n_cols,
                  regs=first["regs"], widest_load=max(first["loads"], default=0),
                  widest_store=max(first["stores"], default=0))
        total = Estimate()
        for (pattern, model, *cold), hits in zip(parts, found):
            if len(hits) != 1:
                total.problems.append(f"{len(hits)} kernels match {pattern!r}: update CUDA_MAIN")
                continue
            key = (hits[0], *cold)
            if key not in costs:
                info = funcs[hits[0]]
                off = re.compile(cold[0]).search if cold else None
                costs[key] = sass_cfg.analyse(sass_cfg.parse_function(info["sass"]), info["table"],
                                              cold=(lambda ins: bool(off(ins.op))) if off else None)
            total = total + model(costs[key], n_cols)
        budget(row, total, BUDGET["cuda"])
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
def _num(v):
    return "" if v is None else f"{v:g}"


def status(r):
    if not r.ok:
        return "; ".join(r.problems) or "failed"
    return "; ".join(r.problems + [f"over budget: {m}" for m in r.over_budget]) or "; ".join(["ok"] + r.notes)


def render(rows):
    head = ("| kernel | specialisation | target | regs | stack B | spill B | local B | smem B | ld bits | st bits "
            "| SASS/elem | MUFU/elem | status |")
    lines = [head, "|" + " --- |" * 13]
    for r in rows:
        sass = _num(r.sass_per_element) + (" (max)" if r.path == "max" else "")
        lines.append(f"| {r.kernel} | {r.specialisation} | {r.target} | {r.regs} | {r.stack} | {r.spill} | {r.local} | "
                     f"{r.shared} | {r.widest_load} | {r.widest_store} | {sass} | {_num(r.mufu_per_element)} | "
                     f"{status(r)} |")
    return "\n".join(lines)


def _variant(r):
    """(logits, labels, grad) of a main-path row's name."""
    if r.kernel.endswith(".cu"):
        parts = r.specialisation.split()
        return parts[2], "u8|bool", parts[4][-1]
    parts = r.specialisation.split("-")
    return parts[1], parts[2], parts[9][-1]


def render_budget(rows):
    """Main paths: the best and the worst tile config (all of them must fit) per loss, dtype and C."""
    groups = {}
    for r in rows:
        if r.main_path and r.sass_per_element is not None:
            backend = "cuda" if r.kernel.endswith(".cu") else "triton"
            groups.setdefault((backend, r.loss, r.C, *_variant(r), r.target), []).append(r)
    lines = ["| backend | loss | C | logits | labels | grad | target | configs | SASS/elem best | worst | "
             "worst, shortest path | MUFU/elem worst | budget |", "|" + " --- |" * 13]
    for key, members in sorted(groups.items()):
        best = min(members, key=lambda r: r.sass_per_element)
        worst = max(members, key=lambda r: r.sass_per_element)
        mufu = max(r.mufu_per_element for r in members)
        limit = BUDGET[key[0]]
        verdict = ("-" if key[-1] != f"sm_{BUDGET_ARCH}" else
                   "over" if any(r.over_budget for r in members) else
                   "ok" if key[1] in BUDGET_LOSSES or not any(r.notes for r in members) else
                   "over, reported") + f" (≤ {limit} / {BUDGET['mufu']})"
        shortest = f"{worst.sass_per_element_min:g}" if worst.path == "max" else "(exact)"
        lines.append(f"| {' | '.join(str(k) for k in key)} | {len(members)} | {best.sass_per_element:g} | "
                     f"{worst.sass_per_element:g} | {shortest} | {mufu:g} | {verdict} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="folder for static_check.md/.json")
    parser.add_argument("--arch", nargs="+", type=int, default=[80, 90])
    parser.add_argument("--quick", action="store_true",
                        help="main paths with uint8 labels and the gradient, and the helper kernels")
    parser.add_argument("--only", default=None, metavar="REGEX", help="Triton specialisations whose name matches")
    parser.add_argument("--no-budget", action="store_true",
                        help="report the instruction budget, do not fail on it (other problems still fail)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel Triton compiles")
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9's default, stated to silence its warning
    tool = cuobjdump()
    if tool is None:
        print("static_check: no cuobjdump (install triton); nothing checked", file=sys.stderr)
        return 1
    start = time.time()
    with tempfile.TemporaryDirectory() as work:
        cuda_jobs = start_cuda(args.arch, work)
        rows = check_triton(args.arch, tool, args.quick, args.only, work, args.jobs) + check_cuda(cuda_jobs, tool)
    table, summary = render(rows), render_budget(rows)
    print(table)
    print("\nInstructions per logits element on the main paths:\n\n" + summary)
    bad, over = failing(rows)
    print(f"\n{len(rows)} kernels checked in {time.time() - start:.0f} s: {len(rows) - len(bad)} clean, "
          f"{len(bad)} with problems; {len(over)} main paths over the sm_{BUDGET_ARCH} budget"
          + (" (reported only: --no-budget)" if args.no_budget and over else ""))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "static_check.md").write_text(
            table + "\n\n## Instructions per logits element (main paths)\n\n" + summary + "\n")
        (out / "static_check.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 1 if bad or (over and not args.no_budget) else 0


def failing(rows):
    """(rows with problems, main paths over the budget)."""
    return [r for r in rows if r.problems or not r.ok], [r for r in rows if r.over_budget]


if __name__ == "__main__":
    sys.exit(main())
