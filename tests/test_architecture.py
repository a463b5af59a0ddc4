"""The package's shape: imports flow one way, every module imports first, the C++ codes match."""
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dbl_kernels

PKG = Path(dbl_kernels.__file__).resolve().parent
ROOT = PKG.parent

# Lowest first: a module may import only modules of a lower rank (or, inside the Triton package,
# earlier ones in its own order). API -> dispatch -> backends -> shared glue -> contract -> reference.
LAYERS = [
    ["_tracing", "_labels", "_sparse"],
    ["reference", "stats"],
    ["_spec", "_rows"],
    ["ops"],
    ["cpp_ops", "triton_kernel._math"],
    ["triton_kernel._access"],
    ["triton_kernel.kernels"],
    ["triton_kernel.tuning"],
    ["triton_kernel.launcher"],
    ["triton_kernel.aot"],
    ["triton_kernel"],
    ["backends"],
    ["loss"],
    ["asymmetric", "linear"],
    ["__init__"],
    ["demo"],  # the training demo, on top of the API
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _module_name(path):
    rel = path.relative_to(PKG).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _package_modules():
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def _rank(name):
    while name not in RANK and "." in name:
        name = name.rsplit(".", 1)[0]  # demo.cli -> demo
    return RANK[name]


def _imports(path):
    name = _module_name(path)
    return _imports_of(path.read_text(), name, is_package=path.name == "__init__.py" and name != "__init__")


def _imports_of(source, name, is_package=False):
    """Every package module that module ``name`` imports, at module level or inside functions."""
    package = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
            target = ".".join(base + ([node.module] if node.module else []))
            if node.module:
                found.add(target)
            else:  # from . import x, y
                found.update(".".join(base + [alias.name]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dbl_kernels."):
            found.add(node.module[len("dbl_kernels."):])
        elif isinstance(node, ast.Import):
            found.update(a.name[len("dbl_kernels."):] for a in node.names if a.name.startswith("dbl_kernels."))
    return {_owner(t) for t in found if t and t != "_C"}


def _owner(target):
    """The module that defines ``target``: itself, or the package it is an attribute of
    (``from .. import __version__``)."""
    known = {_module_name(p) for p in _package_modules()}
    while target not in known and "." in target:
        target = target.rsplit(".", 1)[0]
    return target if target in known else "__init__"


def test_every_module_has_a_layer():
    for path in _package_modules():
        _rank(_module_name(path))  # KeyError names a module missing from LAYERS


def test_imports_flow_one_way():
    upward = []
    for path in _package_modules():
        name = _module_name(path)
        for target in _imports(path):
            if target.split(".")[0] == name.split(".")[0] == "demo":
                continue  # inside the demo package
            if _rank(target) >= _rank(name):
                upward.append(f"{name} imports {target}")
    assert not upward, "imports that do not flow down: " + "; ".join(sorted(upward))


def test_the_layering_check_sees_every_import_form():
    top = ("import torch\nfrom . import ops, reference\nfrom ._spec import KernelSpec\n"
           "def f():\n    from . import backends\n    import dbl_kernels.loss\n")
    assert _imports_of(top, "_tracing") == {"ops", "reference", "_spec", "backends", "loss"}
    nested = "from .. import stats, __version__\ndef g():\n    from .kernels import k\n"
    assert _imports_of(nested, "triton_kernel.launcher") == {"stats", "__init__", "triton_kernel.kernels"}


def test_each_module_imports_first_in_a_fresh_interpreter():
    """The static check above rules out import circles; this shows it on the real interpreter, one
    fresh process per module (the demo's modules sit on top and are covered by its own tests)."""
    modules = sorted(m for m in {_module_name(p) for p in _package_modules()}
                     if m != "__init__" and not m.startswith("demo"))
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    procs = {m: subprocess.Popen([sys.executable, "-c", f"import dbl_kernels.{m}"], cwd=ROOT, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for m in modules}
    failed = {}
    for m, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        if proc.returncode != 0 and "triton is not importable" not in err:
            failed[m] = err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"
    assert not failed, failed


def _c_enums():
    """The enumerators of csrc/dbl_math.h and dbl_ops.h, implicit values included."""
    text = "\n".join((ROOT / "csrc" / name).read_text() for name in ("dbl_math.h", "dbl_ops.h"))
    codes = {}
    for body in re.findall(r"enum\s+\w+\s*\{([^}]*)\}", text):
        value = -1
        for item in body.split(","):
            m = re.match(r"\s*(\w+)\s*(?:=\s*(\d+))?\s*$", re.sub(r"//[^\n]*", "", item))
            if m:
                value = int(m.group(2)) if m.group(2) is not None else value + 1
                codes[m.group(1)] = value
    return codes


def test_cpp_enum_codes_equal_the_python_contract():
    from dbl_kernels import _spec

    c = _c_enums()
    pairs = {
        "RW_NONE": _spec.REWEIGHT_NONE, "RW_REBALANCE": _spec.REWEIGHT_REBALANCE, "RW_CLASS": _spec.REWEIGHT_CLASS,
        "RW_CB_AVG_W": _spec.REWEIGHT_CB_AVG_W, "RW_CB_AVG_N": _spec.REWEIGHT_CB_AVG_N,
        "RW_CB_MIN_N": _spec.REWEIGHT_CB_MIN_N,
        "NORM_NONE": _spec.NORM_NONE, "NORM_INSTANCE": _spec.NORM_INSTANCE, "NORM_BATCH": _spec.NORM_BATCH,
        "RED_NONE": _spec.REDUCTION_NONE, "RED_SUM": _spec.REDUCTION_SUM, "RED_MEAN": _spec.REDUCTION_MEAN,
        "RED_MEAN_COUNTED": _spec.REDUCTION_MEAN_COUNTED, "RED_PER_CLASS": _spec.REDUCTION_PER_CLASS,
        "P_INV_FREQ": _spec.INV_FREQ, "P_CLASS_W": _spec.CLASS_W, "P_FREQ": _spec.FREQ, "P_BIAS": _spec.BIAS,
        "P_POS_W": _spec.POS_W, "kTableRows": _spec.TABLE_ROWS,
        # the positions in the op's modes and scalars (csrc/dbl_ops.h)
        "M_REWEIGHT": _spec.MODE_REWEIGHT, "M_NORM": _spec.MODE_NORM, "M_LOGIT_REG": _spec.MODE_LOGIT_REG,
        "M_FOCAL": _spec.MODE_FOCAL, "M_REDUCTION": _spec.MODE_REDUCTION, "M_CHECK_LABELS": _spec.MODE_CHECK_LABELS,
        "M_ASYMMETRIC": _spec.MODE_ASYMMETRIC, "M_FOCUS_GRAD": _spec.MODE_FOCUS_GRAD,
        "kNumModes": _spec.MODE_FOCUS_GRAD + 1,
        "kNumScalars": len(_spec.SCALARS),
        **{"S_" + name.upper(): i for i, name in enumerate(_spec.SCALARS)},
    }
    missing = sorted(set(pairs) - set(c))
    assert not missing, f"csrc/dbl_math.h lacks {missing}"
    assert {k: c[k] for k in pairs} == pairs
