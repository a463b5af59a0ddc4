"""Compile every GPU kernel specialisation for sm_80 and sm_90 on a machine without a GPU, and read
the machine code: registers, spills / local memory, shared memory, widest global load and store.

    python benchmarks/static_check.py [--out DIR] [--arch 80 90] [--quick]

Triton kernels are compiled ahead of time (``triton.compile(ASTSource(...), target=GPUTarget(...))``
with the 16-byte divisibility hints the runtime infers for aligned tensors); the CUDA sources in
``csrc/*.cu`` go through ``nvcc -cubin``. Both cubins are read with the ``cuobjdump`` shipped in the
triton wheel (``--dump-resource-usage`` and ``--dump-sass``).

Exits non-zero when anything fails to compile, any kernel spills or uses local memory, or a main
path (bf16/fp32 logits) does not read its logits with 16-byte loads. Writes ``static_check.md`` and
``static_check.json`` to ``--out``.

Reading the table: ``regs`` are registers per thread (≤ 64 keeps full occupancy at 1024 threads/SM
on sm_80/sm_90 with 255 the hard cap), ``spill``/``local`` must be 0, ``ld``/``st`` are the widest
global load/store in bits (128 = 16-byte vector access; a bf16 row read with 128-bit loads moves 8
logits per instruction).
"""
from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parents[1]


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
    problems: list = field(default_factory=list)


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
        mods = m.group(1).split(".")[1:]
        width = 32
        for mod in mods:
            key = "." + mod
            if key in _WIDTH:
                width = _WIDTH[key]
        widths.append(width)
    return widths


def read_cubin(path, tool):
    """{function: {regs, stack, shared, local, loads: [...], stores: [...]}} from one cubin."""
    usage = subprocess.run([tool, "--dump-resource-usage", str(path)], capture_output=True, text=True, check=True).stdout
    funcs = {}
    for m in re.finditer(r"Function ([^\s:]+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage):
        funcs[m.group(1)] = dict(regs=int(m.group(2)), stack=int(m.group(3)), shared=int(m.group(4)),
                                 local=int(m.group(5)), loads=[], stores=[])
    sass = subprocess.run([tool, "--dump-sass", str(path)], capture_output=True, text=True, check=True).stdout
    for block in re.split(r"\n\s*Function : ", sass)[1:]:
        name = block.split()[0]
        if name in funcs:
            funcs[name]["loads"] = _access_widths(block, "LDG")
            funcs[name]["stores"] = _access_widths(block, "STG")
    return funcs


_SPILL = re.compile(r"Function properties for (\S+)\s*\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores")


def ptxas_spills(report):
    """{function: (stack frame bytes, spill-store bytes)} from `ptxas -v` output."""
    return {m.group(1): (int(m.group(2)), int(m.group(3))) for m in _SPILL.finditer(report)}


def _ptx_spill_bytes(ptx, arch, workdir):
    """Spill stores of a Triton kernel, from the ptxas that ships with triton (-v)."""
    tool = Path(cuobjdump()).with_name("ptxas")
    src = Path(workdir) / f"k{os.getpid()}_{arch}.ptx"
    src.write_text(ptx)
    proc = subprocess.run([str(tool), f"-arch=sm_{arch}", "-v", str(src), "-o", os.devnull],
                          capture_output=True, text=True)
    found = ptxas_spills(proc.stderr)
    return max((spill for _, spill in found.values()), default=None)


def _fill(row, info, spill_bytes):
    """spill_bytes: spill stores reported by ptxas (a stack frame alone is the call ABI of a
    library function such as fp64 pow, not a register spill)."""
    row.ok = True
    row.regs, row.local, row.shared = info["regs"], info["local"], info["shared"]
    row.stack = info["stack"]
    row.spill = spill_bytes if spill_bytes is not None else info["stack"]
    row.widest_load = max(info["loads"], default=0)
    row.widest_store = max(info["stores"], default=0)
    if row.spill or row.local:
        row.problems.append(f"spills: {row.spill} B spill stores, local {row.local} B")
    if row.main_path and row.widest_load < 128:
        row.problems.append(f"main path reads logits {row.widest_load}-bit wide, not 128")


# ----------------------------------------------------------------------------------------------
# Triton
# ----------------------------------------------------------------------------------------------
_SPECS = None


def _specs(quick):
    global _SPECS
    if _SPECS is None:
        from dbl_kernels import triton_kernel

        _SPECS = list(triton_kernel.specialisations(quick=quick))
    return _SPECS


def _compile_one(job):
    """One Triton specialisation for one arch (runs in a worker process)."""
    index, arch, quick, tool, workdir = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    spec = _specs(quick)[index]
    row = Row(spec["kernel"], spec["name"], f"sm_{arch}", main_path=spec.get("main_path", False))
    try:
        src = ASTSource(fn=spec["fn"], signature=spec["signature"], constexprs=spec["constexprs"],
                        attrs=spec["attrs"])
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(spec.get("options", {})))
        cubin = Path(workdir) / f"t{index}_{arch}.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        info = next(iter(read_cubin(cubin, tool).values()))
        spill = _ptx_spill_bytes(compiled.asm["ptx"], arch, workdir) if info["stack"] else 0
        _fill(row, info, spill)
    except Exception as exc:  # a compile failure is a finding, not a crash of the check
        row.problems.append(f"compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    return row


def check_triton(archs, tool, quick, workdir, jobs):
    try:
        import triton  # noqa: F401

        count = len(_specs(quick))
    except ImportError as exc:
        return [Row("triton", f"import failed: {exc}", "-", problems=[f"cannot import: {exc}"])]
    work = [(i, arch, quick, tool, workdir) for i in range(count) for arch in archs]
    if jobs <= 1:
        return [_compile_one(job) for job in work]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_compile_one, work, chunksize=4))


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


def check_cuda(archs, tool, workdir):
    nvcc = shutil.which("nvcc")
    sources = sorted((ROOT / "csrc").glob("*.cu"))
    if not sources:
        return []
    if not nvcc:
        print("static_check: nvcc not found, CUDA kernels not checked", file=sys.stderr)
        return [Row(s.name, "nvcc missing", "-", ok=True) for s in sources]
    rows = []
    for source in sources:
        for arch in archs:
            cubin = Path(workdir) / f"{source.stem}_{arch}.cubin"
            cmd = [nvcc, "-cubin", f"-arch=sm_{arch}", "-O3", "-std=c++17", *TORCH_NVCC_FLAGS,
                   "-I", str(ROOT / "csrc"), "-Xptxas", "-v", str(source), "-o", str(cubin)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                rows.append(Row(source.name, "nvcc failed", f"sm_{arch}",
                                problems=[proc.stderr.strip().splitlines()[-1][:300] if proc.stderr else "nvcc failed"]))
                continue
            funcs = read_cubin(cubin, tool)
            spills = ptxas_spills(proc.stdout + proc.stderr)
            pretty = _demangle(list(funcs))
            for name, info in sorted(funcs.items()):
                label = pretty[name]
                # The generic kernel (one element per thread, every option at run time) serves rare
                # configurations and fp64; the main paths are the fixed, vectorised specialisations.
                main = bool(MAIN_CUDA_KERNEL.search(label)) and bool(MAIN_CUDA_PATTERN.search(label)) \
                    and "double" not in label and "__half" not in label and "Half" not in label
                row = Row(source.name, label[:120], f"sm_{arch}", main_path=main)
                _fill(row, info, spills.get(name, (None, None))[1])
                rows.append(row)
    return rows


def render(rows):
    head = ("| kernel | specialisation | target | regs | stack B | spill B | local B | smem B | ld bits | st bits "
            "| status |")
    lines = [head, "|" + " --- |" * 11]
    for r in rows:
        status = "ok" if r.ok and not r.problems else "; ".join(r.problems) or "failed"
        lines.append(f"| {r.kernel} | {r.specialisation} | {r.target} | {r.regs} | {r.stack} | {r.spill} | {r.local} | "
                     f"{r.shared} | {r.widest_load} | {r.widest_store} | {status} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="folder for static_check.md/.json")
    parser.add_argument("--arch", nargs="+", type=int, default=[80, 90])
    parser.add_argument("--quick", action="store_true", help="only the main specialisations")
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
        rows = check_triton(args.arch, tool, args.quick, work, args.jobs) + check_cuda(args.arch, tool, work)
    table = render(rows)
    print(table)
    bad = [r for r in rows if r.problems or not r.ok]
    print(f"\n{len(rows)} kernels checked in {time.time() - start:.0f} s: "
          f"{len(rows) - len(bad)} clean, {len(bad)} with problems")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "static_check.md").write_text(table + "\n")
        (out / "static_check.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
