"""Shared fixtures: the authors' golden values and real label data, and DBL_REQUIRE.

Data files are looked up in the copies shipped in tests/golden and tests/data, then in ../shared
(the developers' shared folder, which also holds what is too big to ship: the authors' legacy
pickle). DBL_SHARED=DIR replaces ../shared and is looked in first; DBL_SHARED=/nonexistent tests
as a fresh clone would.

DBL_REQUIRE=cpu,triton (CI sets it) turns the skips for a missing backend into failures, so a build
that silently produced no extension cannot pass.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

TESTS = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("DBL_SHARED", TESTS.parents[1] / "shared"))
_ROOTS = [SHARED, TESTS] if "DBL_SHARED" in os.environ else [TESTS, SHARED]
DATASET_FILES = {"coco-mlt": "coco_mlt_train_labels.npz", "voc-mlt": "voc_mlt_train_labels.npz"}
BACKENDS = ("cpu", "cuda", "triton")
REQUIRED = sorted({b.strip() for b in os.environ.get("DBL_REQUIRE", "").split(",") if b.strip()})


def find_data(relative):
    """The first existing file of that name in the folders of _ROOTS (see the module docstring), or None."""
    for root in _ROOTS:
        if (root / relative).exists():
            return root / relative
    return None


def _where(relative):
    return ", ".join(str(root / relative) for root in _ROOTS)


GOLDEN_JSON = find_data("golden/official_resample_loss.json")


def _golden_cases():
    return json.loads(GOLDEN_JSON.read_text()) if GOLDEN_JSON else []


GOLDEN_CASES = _golden_cases()


@pytest.fixture(scope="session")
def golden_arrays():
    if not GOLDEN_CASES:
        pytest.skip(f"golden values not found (looked for {_where('golden/official_resample_loss.json')})")
    # the arrays from the same folder as the cases: a pair from two folders might not match
    with np.load(GOLDEN_JSON.with_suffix(".npz")) as data:
        return {k: data[k] for k in data.files}


def shared_file(relative):
    """A data file (see the module docstring), or a skip that says where it was looked for."""
    path = find_data(relative)
    if path is None:
        pytest.skip(f"{relative} not found (looked in {_where(relative)}; set DBL_SHARED to the shared data folder)")
    return path


def dataset_counts(name):
    """class_freq and neg_class_freq of the authors' file for that data set."""
    with np.load(shared_file(Path("data") / DATASET_FILES[name])) as data:
        return data["class_freq"], data["neg_class_freq"]


def golden_case(case, arrays):
    """(ResampleLoss kwargs, counts, logits, labels, loss, grad) of one golden configuration."""
    name = case["name"]
    return (case["resample_loss_kwargs"], dataset_counts(case["dataset"]),
            torch.from_numpy(arrays[f"{name}/logits"]), torch.from_numpy(arrays[f"{name}/labels"]),
            float(arrays[f"{name}/loss_mean"]), torch.from_numpy(arrays[f"{name}/grad_mean"]))


def rel_err(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def cuda_emulate(*args):
    """dbl::_cuda_emulate (the CUDA kernel run on the CPU), or a skip where the extension was built
    without it (DBL_NO_EMULATE=1: device builds, where the real kernel runs)."""
    if not hasattr(torch.ops.dbl, "_cuda_emulate"):
        pytest.skip("the extension was built without the CUDA emulation (DBL_NO_EMULATE=1)")
    return torch.ops.dbl._cuda_emulate(*args)


# -- DBL_REQUIRE: a missing backend fails instead of skipping ---------------------------------------
_HOW_TO_GET = {
    "cpu": "build the C++ extension (`pip install --no-build-isolation -e .`)",
    "cuda": "build the C++ extension with a CUDA torch and nvcc (`pip install --no-build-isolation -e .`)",
    "triton": "install triton and run on a GPU or with TRITON_INTERPRET=1",
}


def _required_message(backend, reason):
    return (f"{reason}. DBL_REQUIRE={','.join(REQUIRED)} requires the {backend} backend, so this is a "
            f"failure, not a skip: {_HOW_TO_GET[backend]}; `bash scripts/test.sh` sets all this up. "
            "Or unset DBL_REQUIRE.")


def needs_backend(backend, available, reason):
    """A mark for tests that need ``backend``: a skip when it is missing, a failure when DBL_REQUIRE names it."""
    if available or backend not in REQUIRED:
        return pytest.mark.skipif(not available, reason=reason)
    return pytest.mark.dbl_required_missing(_required_message(backend, reason))


def backend_missing(backend, reason):
    """Module level: skip the whole file for lack of ``backend``, or fail its collection when it is required."""
    if backend in REQUIRED:
        # from None: called in an `except ImportError`, whose traceback would bury the message
        raise pytest.fail.Exception(_required_message(backend, reason), pytrace=False) from None
    pytest.skip(reason, allow_module_level=True)


def pytest_configure(config):
    unknown = [b for b in REQUIRED if b not in BACKENDS]
    if unknown:
        raise pytest.UsageError(f"DBL_REQUIRE names unknown backend(s) {unknown}; use a comma-separated "
                                f"subset of {', '.join(BACKENDS)}, e.g. DBL_REQUIRE=cpu,triton")
    config.addinivalue_line("markers", "dbl_required_missing(message): a required backend is missing (DBL_REQUIRE)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    # in the call, not the setup: a failed test, not an error in a fixture
    for mark in item.iter_markers("dbl_required_missing"):
        pytest.fail(mark.args[0], pytrace=False)
