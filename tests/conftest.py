"""Shared fixtures: the authors' golden values and the real label data in ../shared."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(os.environ.get("DBL_SHARED", Path(__file__).resolve().parents[2] / "shared"))
GOLDEN = SHARED / "golden"
DATASET_FILES = {"coco-mlt": "coco_mlt_train_labels.npz", "voc-mlt": "voc_mlt_train_labels.npz"}


def _golden_cases():
    path = GOLDEN / "official_resample_loss.json"
    return json.loads(path.read_text()) if path.exists() else []


GOLDEN_CASES = _golden_cases()


@pytest.fixture(scope="session")
def golden_arrays():
    if not GOLDEN_CASES:
        pytest.skip(f"golden values not found under {GOLDEN} (set DBL_SHARED)")
    with np.load(GOLDEN / "official_resample_loss.npz") as data:
        return {k: data[k] for k in data.files}


def shared_file(relative):
    """A file of the shared data folder, or a skip that says where it was looked for."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{relative} not found under {SHARED} (set DBL_SHARED to the shared data folder)")
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
