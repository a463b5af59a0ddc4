"""The test suite's own plumbing: DBL_REQUIRE turns missing-backend skips into failures, and the
golden values and label data ship with the tests (no ../shared needed)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import DATASET_FILES, GOLDEN_CASES

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

_TINY = '''
from conftest import needs_backend

@needs_backend("cpu", False, "no C++ extension here")
def test_needs_cpu():
    pass

@needs_backend("triton", False, "no triton here")
def test_needs_triton():
    pass

@needs_backend("cpu", True, "")
def test_has_cpu():
    pass
'''
_TINY_MODULE = '''
from conftest import backend_missing
backend_missing("triton", "no triton here")

def test_never_runs():
    pass
'''


def _pytest(args, cwd, plugin_dir=None, **env):
    """Run pytest in a subprocess; (exit code, output). plugin_dir goes first on the import path."""
    env = {k: v for k, v in os.environ.items() if k not in ("DBL_REQUIRE", "DBL_SHARED")} | env
    env["PYTHONPATH"] = os.pathsep.join(p for p in (plugin_dir, str(TESTS), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def _counts(output):
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", output)}


def test_required_backend_fails_instead_of_skipping(tmp_path):
    (tmp_path / "test_tiny.py").write_text(_TINY)
    # -p conftest: the tests' conftest as a plugin (its hooks), though the tiny file lives elsewhere
    rc, out = _pytest(["-p", "conftest", "test_tiny.py"], tmp_path)
    assert rc == 0 and _counts(out) == {"passed": 1, "skipped": 2}, out
    rc, out = _pytest(["-p", "conftest", "test_tiny.py"], tmp_path, DBL_REQUIRE="cpu")
    assert rc == 1 and _counts(out) == {"passed": 1, "failed": 1, "skipped": 1}, out
    assert "no C++ extension here. DBL_REQUIRE=cpu requires the cpu backend" in out


def test_required_backend_fails_a_module_level_skip(tmp_path):
    (tmp_path / "test_tiny_module.py").write_text(_TINY_MODULE)
    rc, out = _pytest(["-p", "conftest", "test_tiny_module.py"], tmp_path)
    assert rc == 5 and _counts(out) == {"skipped": 1}, out  # 5: nothing ran
    rc, out = _pytest(["-p", "conftest", "test_tiny_module.py"], tmp_path, DBL_REQUIRE="cpu,triton")
    assert rc != 0 and "no triton here. DBL_REQUIRE=cpu,triton requires the triton backend" in out, out


def test_unknown_required_backend_is_a_usage_error(tmp_path):
    (tmp_path / "test_tiny.py").write_text(_TINY)
    rc, out = _pytest(["-p", "conftest", "test_tiny.py"], tmp_path, DBL_REQUIRE="gpu")
    assert rc == 4 and "DBL_REQUIRE names unknown backend(s) ['gpu']" in out, out


def test_missing_extension_fails_the_cpp_tests_under_dbl_require(tmp_path):
    # the real wiring: test_cpp_backend.py with dbl_kernels._C made unimportable
    (tmp_path / "hide_extension.py").write_text('import sys\nsys.modules["dbl_kernels._C"] = None\n')
    rc, out = _pytest(["-p", "hide_extension", "tests/test_cpp_backend.py", "-k", "golden"], ROOT,
                      plugin_dir=str(tmp_path), DBL_REQUIRE="cpu")
    counts = _counts(out)
    assert rc == 1 and counts.get("failed", 0) == len(GOLDEN_CASES) and "passed" not in counts, out
    assert "C++ extension not built" in out and "DBL_REQUIRE=cpu requires the cpu backend" in out


def test_golden_values_and_label_data_ship_with_the_tests():
    cases = json.loads((TESTS / "golden" / "official_resample_loss.json").read_text())
    assert len(cases) == 9 and cases == GOLDEN_CASES
    with np.load(TESTS / "golden" / "official_resample_loss.npz") as data:
        for case in cases:
            assert {f"{case['name']}/{k}" for k in ("logits", "labels", "loss_mean", "grad_mean")} <= set(data.files)
    for name, file in DATASET_FILES.items():
        with np.load(TESTS / "data" / file) as data:
            labels, freq, neg = data["labels"], data["class_freq"], data["neg_class_freq"]
        np.testing.assert_array_equal(labels.sum(0), freq)
        np.testing.assert_array_equal((1 - labels.astype(np.int64)).sum(0), neg)


def test_golden_tests_run_without_the_shared_folder():
    # as in a fresh clone: the golden tests run on the shipped copies; only the legacy pickle is missing
    rc, out = _pytest(["tests/test_reference.py", "tests/test_stats.py", "-k", "golden or legacy"], ROOT,
                      DBL_SHARED="/nonexistent")
    assert rc == 0 and _counts(out) == {"passed": len(GOLDEN_CASES), "skipped": 1}, out
    assert "data/legacy/coco_mlt_class_freq.pkl not found (looked in /nonexistent/data/legacy" in out
