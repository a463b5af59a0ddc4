"""Class statistics: positives n_j per class and the training-set size T.

Everything is float64 numpy on the host, so deriving per-class tensors never syncs a device.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np

from . import _sparse
from ._labels import check_label_values

_PRESET_DIR = Path(__file__).parent / "presets"
PRESETS = {"coco-mlt": "coco_mlt_stats.npz", "voc-mlt": "voc_mlt_stats.npz"}
ArrayLike = Any  # a numpy array, a torch tensor or a (nested) sequence of numbers


class _RefusedPickle(pickle.UnpicklingError, ValueError):
    """A pickle that names a global other than numpy's: a ValueError like every other load error."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Loads the authors' class_freq.pkl without executing code.

    Admits numpy arrays, dtypes and scalars and builtin containers; any other global (``os.system``,
    ``builtins.eval``...) is refused before anything is called.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 2 pickles spell byte strings
        ("collections", "OrderedDict"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise _RefusedPickle(
                f"refusing to load {module}.{name} from a class-frequency pickle: only numpy arrays "
                "and builtin containers are allowed. Convert the file with a trusted tool to .npz/.json.")
        if module.startswith("numpy.core"):
            module = module.replace("numpy.core", "numpy._core" if hasattr(np, "_core") else "numpy.core")
        return super().find_class(module, name)


def _as_counts(name, value):
    arr = np.array(value, dtype=np.float64)  # a copy: the caller's array stays writable
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of per-class counts, got shape {arr.shape}")
    return arr


_KEYS = ("class_freq", "neg_class_freq", "train_num")
_EXPECTED = ("numeric arrays 'class_freq' and 'neg_class_freq' (or a number 'train_num'), as "
             "ClassStats.save writes")


def _read_npz(path):
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        # numpy's own message here talks about allow_pickle: the file is simply not an archive
        raise ValueError(f"{path} is not a valid .npz archive (numpy.savez output); expected {_EXPECTED}") from exc
    if not hasattr(data, "files"):
        raise ValueError(f"{path} holds a single .npy array, not a .npz archive of {_EXPECTED}")
    with data:
        if "class_freq" not in data.files:
            raise _no_class_freq(path, data.files)
        fields = {}
        for key in set(_KEYS) & set(data.files):  # only these: other entries (labels, names) may be anything
            try:
                fields[key] = data[key]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                raise ValueError(f"{path}: entry '{key}' holds Python objects (an object array) or is damaged; "
                                 f"expected {_EXPECTED}") from exc
        return fields


def _no_class_freq(path, found):
    return ValueError(f"{path} has no 'class_freq' entry (found {sorted(found)}); expected {_EXPECTED}")


def _read_json(path):
    try:
        fields = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); expected an object of {_EXPECTED}") from exc
    if not isinstance(fields, dict):
        raise ValueError(f"{path} holds a JSON {type(fields).__name__}, expected an object of {_EXPECTED}")
    return fields


def _read_pickle(path):
    try:
        fields = _NumpyOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except _RefusedPickle as exc:
        raise _RefusedPickle(f"{path}: {exc}") from exc
    except FileNotFoundError:
        raise
    except Exception as exc:  # a damaged pickle fails in many ways (EOF, bad opcodes, struct errors...)
        raise ValueError(f"{path} is not a readable pickle ({type(exc).__name__}: {exc}); expected the "
                         "authors' class_freq.pkl, a dict of numpy arrays with 'class_freq'") from exc
    if not isinstance(fields, dict):
        raise ValueError(f"{path} holds a {type(fields).__name__}, expected a dict with 'class_freq'")
    return fields


def _numeric(path, key, value):
    """``value`` as a numpy array of numbers, or an error naming the file and the entry."""
    try:
        arr = np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise ValueError(f"{path}: '{key}' must be a 1-D array of numbers, not a ragged nested list") from exc
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{path}: '{key}' must hold numbers, got {arr.dtype} values; expected {_EXPECTED}")
    return arr


def _counts(labels, what="labels"):
    """float64 [positives per class..., rows] of an N x C label matrix (-1 entries ignored)."""
    import torch

    if _sparse.is_csr(labels):
        _sparse.check_csr(labels, labels.shape, validate=True)
        values, cols = labels.values(), labels.col_indices()
        positives = torch.bincount(cols[values > 0], minlength=labels.shape[1]).to(torch.float64).cpu()
        return torch.cat([positives, positives.new_tensor([labels.shape[0]])])
    t = torch.as_tensor(labels)
    if t.dim() != 2:
        raise ValueError(f"{what} must be a 2-D N x C matrix, got shape {tuple(t.shape)}")
    check_label_values(t, name=what)  # a 2 would count twice, a 255 everywhere: the loss's own label error
    t = t.to(torch.float64)
    return torch.cat([t.clamp(min=0).sum(0), t.new_tensor([t.shape[0]])])


def _all_reduce(counts, distributed):
    """The counts summed over the torch.distributed ranks (distributed=True), else as they are."""
    if not distributed:
        return counts
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("distributed=True needs an initialised torch.distributed process group")
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    counts = counts.to(device)
    dist.all_reduce(counts)
    return counts


def _default_labels(batch):
    if isinstance(batch, dict) and "labels" in batch:
        return batch["labels"]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[1]
    raise TypeError(f"cannot find the labels in a batch of type {type(batch).__name__}: pass "
                    "labels=lambda batch: ... to ClassStats.from_loader")


class ClassStats:
    """Per-class positive counts n_j (``class_freq``), negatives and the training-set size T.

    Build with one of the constructors: ``from_labels``, ``from_counts``, ``from_fractions``,
    ``load`` (``.npz``, ``.json`` or the authors' ``class_freq.pkl``) or ``preset``.
    """

    def __init__(self, class_freq: ArrayLike, neg_class_freq: Optional[ArrayLike] = None,
                 train_num: Optional[float] = None, *, smooth: Optional[float] = None) -> None:
        freq = _as_counts("class_freq", class_freq)
        if neg_class_freq is None and train_num is None:
            raise ValueError("give neg_class_freq or train_num along with class_freq")
        if train_num is None:
            neg = _as_counts("neg_class_freq", neg_class_freq)
            if neg.shape != freq.shape:
                raise ValueError(f"neg_class_freq has shape {neg.shape} but class_freq has {freq.shape}")
            totals = freq + neg
            if not np.all(np.isfinite(totals)) or np.any(totals != totals[0]):
                raise ValueError("class_freq + neg_class_freq must be the same training-set size for every class")
            train_num = float(totals[0])
        train_num = float(train_num)
        if not np.isfinite(train_num) or train_num <= 0:
            raise ValueError(f"train_num must be a positive number of training samples, got {train_num}")
        if smooth is not None:
            if not (isinstance(smooth, (int, float)) and smooth > 0):
                raise ValueError(f"smooth must be a positive pseudo-count, got {smooth!r}")
            freq = (freq + smooth) * train_num / (train_num + 2 * smooth)
        self._validate(freq, train_num)
        self._freq = freq
        self._freq.setflags(write=False)
        self._train_num = train_num
        neg = train_num - freq
        neg.setflags(write=False)
        self._neg = neg

    @staticmethod
    def _validate(freq, train_num):
        bad = np.flatnonzero(~np.isfinite(freq))
        if bad.size:
            raise ValueError(f"class_freq is NaN or infinite for classes {bad.tolist()[:20]}")
        bad = np.flatnonzero(freq < 0)
        if bad.size:
            raise ValueError(f"class_freq is negative for classes {bad.tolist()[:20]}")
        bad = np.flatnonzero(freq <= 0)
        if bad.size:
            raise ValueError(
                f"classes {bad.tolist()[:20]} have no positive sample (n_j = 0): the DB weight and the "
                "NTR bias need 0 < n_j < T. Drop these classes, or pass smooth=1.0 for add-one smoothing.")
        bad = np.flatnonzero(freq >= train_num)
        if bad.size:
            raise ValueError(
                f"classes {bad.tolist()[:20]} are positive in every sample (n_j >= T = {train_num:g}): the "
                "NTR bias -log(T/n_j - 1) is undefined. Drop these classes, or pass smooth=1.0.")

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def from_counts(cls, class_freq: ArrayLike, neg_class_freq: Optional[ArrayLike] = None,
                    train_num: Optional[float] = None, *, smooth: Optional[float] = None) -> "ClassStats":
        return cls(class_freq, neg_class_freq, train_num, smooth=smooth)

    @classmethod
    def from_fractions(cls, fractions: ArrayLike, train_num: float, *, smooth: Optional[float] = None) -> "ClassStats":
        frac = _as_counts("fractions", fractions)
        if np.any((frac < 0) | (frac > 1)):
            raise ValueError("fractions must lie in [0, 1] (positives per class / train_num)")
        return cls(frac * float(train_num), train_num=train_num, smooth=smooth)

    @classmethod
    def from_labels(cls, labels: ArrayLike, *, distributed: bool = False, smooth: Optional[float] = None) -> "ClassStats":
        """Count positives per class in an N x C label matrix (-1 entries are ignored).

        T is the number of rows. With ``distributed=True`` the counts are summed over all
        ``torch.distributed`` ranks, so every rank gets the statistics of the whole data set.
        """
        counts = _counts(labels)
        return cls._from_counts_and_rows(_all_reduce(counts, distributed), smooth)

    @classmethod
    def from_loader(cls, loader: Iterable, labels: Optional[Callable[[Any], ArrayLike]] = None, *,
                    distributed: bool = False, progress: bool = True, smooth: Optional[float] = None) -> "ClassStats":
        """Count positives per class over the batches of a ``DataLoader`` (or any iterable), with the
        same result as ``from_labels`` on all its label rows concatenated.

        ``labels(batch)`` picks a batch's N x C labels; by default ``batch[1]`` of an
        ``(inputs, labels, ...)`` tuple or ``batch["labels"]`` of a dict. ``progress`` shows a tqdm
        bar when tqdm is installed. ``distributed=True`` sums the counts over all ranks (each rank
        passes the loader of its own shard).
        """
        pick = labels if labels is not None else _default_labels
        batches = loader
        if progress:
            try:
                from tqdm.auto import tqdm

                batches = tqdm(loader, desc="class statistics", unit="batch")
            except ImportError:
                pass  # tqdm is optional: no bar
        total = None
        for i, batch in enumerate(batches):
            counts = _counts(pick(batch), what=f"labels of batch {i}")
            if total is not None and counts.shape != total.shape:
                raise ValueError(f"the labels of batch {i} have {counts.shape[0] - 1} classes, earlier batches "
                                 f"{total.shape[0] - 1}")
            total = counts if total is None else total + counts
        if total is None:
            raise ValueError("the loader yielded no batch: no statistics to count")
        return cls._from_counts_and_rows(_all_reduce(total, distributed), smooth)

    @classmethod
    def _from_counts_and_rows(cls, counts, smooth):
        counts = counts.cpu().numpy()
        return cls(counts[:-1], train_num=counts[-1], smooth=smooth)

    @classmethod
    def preset(cls, name: str) -> "ClassStats":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls.load(_PRESET_DIR / PRESETS[name])

    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, smooth: Optional[float] = None) -> "ClassStats":
        """Load ``.npz`` / ``.json`` written by ``save``, or the authors' ``class_freq.pkl``.

        Pickles are read with a restricted unpickler that admits numpy arrays only. A file that
        cannot be read, or that does not hold the counts, raises a ``ValueError`` naming it.
        """
        path = Path(path)
        readers = {".npz": _read_npz, ".json": _read_json, ".pkl": _read_pickle, ".pickle": _read_pickle}
        reader = readers.get(path.suffix.lower())
        if reader is None:
            raise ValueError(f"cannot read {path}: use a .npz, .json or the authors' .pkl file")
        fields = reader(path)
        if "class_freq" not in fields:
            raise _no_class_freq(path, fields)
        counts = {key: _numeric(path, key, fields.get(key)) for key in _KEYS if fields.get(key) is not None}
        train_num = counts.get("train_num")
        if train_num is not None and train_num.size != 1:
            raise ValueError(f"{path}: train_num must be one number, got an array of shape {train_num.shape}")
        try:
            return cls(counts["class_freq"], counts.get("neg_class_freq") if train_num is None else None,
                       None if train_num is None else float(train_num.reshape(())), smooth=smooth)
        except ValueError as exc:  # shapes, counts out of range: say which file
            raise ValueError(f"{path}: {exc}") from exc

    def save(self, path: Union[str, os.PathLike]) -> None:
        path = Path(path)
        if path.suffix.lower() == ".npz":
            np.savez(path, class_freq=self._freq, neg_class_freq=self._neg, train_num=self._train_num)
        elif path.suffix.lower() == ".json":
            path.write_text(json.dumps({"class_freq": self._freq.tolist(),
                                        "neg_class_freq": self._neg.tolist(),
                                        "train_num": self._train_num}))
        else:
            raise ValueError(f"cannot write {path}: use a .npz or .json file name")

    # -- read-only views ----------------------------------------------------------------------
    @property
    def class_freq(self) -> np.ndarray:
        return self._freq

    @property
    def neg_class_freq(self) -> np.ndarray:
        return self._neg

    @property
    def train_num(self) -> float:
        return self._train_num

    @property
    def num_classes(self) -> int:
        return self._freq.shape[0]

    def __len__(self):
        return self.num_classes

    def __repr__(self):
        return (f"ClassStats(num_classes={self.num_classes}, train_num={self._train_num:g}, "
                f"class_freq=[{self._freq.min():g} .. {self._freq.max():g}])")
