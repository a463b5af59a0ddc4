"""ClassStats: constructors, files (safe pickle loading), presets, validation, distributed counts."""
import os
import pickle
import socket

import numpy as np
import pytest
import torch

from dbl_kernels import ClassStats

from conftest import dataset_counts, shared_file


def test_from_labels_counts_positives_and_ignores_unknown():
    labels = np.array([[1, 0, -1], [1, 1, 0], [0, 1, 1], [1, 0, 0]])
    stats = ClassStats.from_labels(labels)
    np.testing.assert_array_equal(stats.class_freq, [3, 2, 1])
    assert stats.train_num == 4
    np.testing.assert_array_equal(stats.neg_class_freq, [1, 2, 3])
    assert stats.class_freq.dtype == np.float64


def test_constructors_agree():
    freq, neg = dataset_counts("coco-mlt")
    a = ClassStats.from_counts(freq, neg)
    b = ClassStats.from_counts(freq, train_num=1909)
    c = ClassStats.from_fractions(freq / 1909.0, train_num=1909)
    with np.load(shared_file("data/coco_mlt_train_labels.npz")) as data:
        d = ClassStats.from_labels(torch.from_numpy(data["labels"]))
    p = ClassStats.preset("coco-mlt")
    for s in (b, c, d, p):
        np.testing.assert_allclose(s.class_freq, a.class_freq)
        assert s.train_num == a.train_num == 1909


def test_read_only():
    stats = ClassStats.preset("voc-mlt")
    with pytest.raises(ValueError):
        stats.class_freq[0] = 1
    with pytest.raises(AttributeError):
        stats.train_num = 3


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_save_load_roundtrip(tmp_path, suffix):
    stats = ClassStats.preset("voc-mlt")
    path = tmp_path / f"stats{suffix}"
    stats.save(path)
    again = ClassStats.load(path)
    np.testing.assert_array_equal(again.class_freq, stats.class_freq)
    assert again.train_num == stats.train_num


def test_authors_legacy_pickle_loads_without_code():
    path = shared_file("data/legacy/coco_mlt_class_freq.pkl")
    if not path.exists():
        pytest.skip("legacy pickle not found")
    stats = ClassStats.load(path)
    freq, neg = dataset_counts("coco-mlt")
    np.testing.assert_array_equal(stats.class_freq, freq)
    assert stats.train_num == 1909


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_that_imports_os_is_refused(tmp_path):
    path = tmp_path / "class_freq.pkl"
    path.write_bytes(pickle.dumps({"class_freq": np.ones(3), "x": _Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        ClassStats.load(path)


@pytest.mark.parametrize("freq, match", [
    ([3.0, 0.0, 2.0], r"classes \[1\] have no positive"),
    ([3.0, 10.0, 2.0], r"classes \[1\] are positive in every sample"),
    ([3.0, -1.0, 2.0], "negative"),
    ([3.0, float("nan"), 2.0], "NaN"),
])
def test_bad_counts_name_the_classes(freq, match):
    with pytest.raises(ValueError, match=match):
        ClassStats(freq, train_num=10)


def test_smoothing_makes_empty_classes_usable():
    stats = ClassStats([3.0, 0.0, 10.0], train_num=10, smooth=1.0)
    assert (stats.class_freq > 0).all() and (stats.class_freq < 10).all()


def test_bad_shapes_and_files(tmp_path):
    with pytest.raises(ValueError, match="1-D"):
        ClassStats(np.ones((2, 2)), train_num=10)
    with pytest.raises(ValueError, match="neg_class_freq or train_num"):
        ClassStats([1.0, 2.0])
    with pytest.raises(ValueError, match="same training-set size"):
        ClassStats([1.0, 2.0], [5.0, 5.0])
    with pytest.raises(ValueError, match="unknown preset"):
        ClassStats.preset("imagenet")
    with pytest.raises(ValueError, match="2-D"):
        ClassStats.from_labels(np.ones(3))
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(ValueError, match=".npz, .json"):
        ClassStats.load(tmp_path / "x.txt")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, labels, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        shard = labels[rank::world]
        stats = ClassStats.from_labels(shard, distributed=True)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(len(shard)), shard), batch_size=4)
        by_loader = ClassStats.from_loader(loader, distributed=True, progress=False)
        assert by_loader.class_freq.tolist() == stats.class_freq.tolist() and by_loader.train_num == stats.train_num
        out[rank] = (stats.class_freq.tolist(), stats.train_num)
    finally:
        dist.destroy_process_group()


def test_distributed_counts_sum_over_ranks():
    import torch.multiprocessing as mp

    rng = np.random.default_rng(0)
    labels = torch.from_numpy((rng.random((37, 6)) < 0.4).astype(np.uint8))
    labels[0] = 1
    labels[1] = 0
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_ddp_worker, args=(2, _free_port(), labels, out), nprocs=2, join=True)
    whole = ClassStats.from_labels(labels)
    for rank in range(2):
        freq, train_num = out[rank]
        np.testing.assert_array_equal(freq, whole.class_freq)
        assert train_num == 37


def test_distributed_needs_process_group():
    with pytest.raises(ValueError, match="process group"):
        ClassStats.from_labels(np.ones((2, 2)), distributed=True)


def test_from_loader_equals_from_labels_on_the_concatenated_labels(capsys):
    rng = np.random.default_rng(3)
    labels = torch.from_numpy(rng.integers(-1, 2, size=(53, 7)).astype(np.int8))  # partial labels
    labels[:, 0] = 1
    labels[:, 1] = 0
    labels[0, :2] = torch.tensor([0, 1])
    dataset = torch.utils.data.TensorDataset(torch.randn(53, 3), labels)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=True)
    whole = ClassStats.from_labels(labels)
    for stats in (ClassStats.from_loader(loader),  # (inputs, labels) tuples, with a progress bar
                  ClassStats.from_loader(({"image": x, "labels": y} for x, y in loader), progress=False),
                  ClassStats.from_loader(loader, labels=lambda batch: batch[1].float(), progress=False)):
        np.testing.assert_array_equal(stats.class_freq, whole.class_freq)
        assert stats.train_num == whole.train_num == 53
    assert "class statistics" in capsys.readouterr().err  # tqdm's bar


def test_from_loader_errors_name_the_batch():
    good, bad = torch.zeros(2, 3, dtype=torch.uint8), torch.full((2, 3), 2, dtype=torch.uint8)
    good[0] = 1
    with pytest.raises(ValueError, match="integer labels of batch 1 must be 0, 1 or -1"):
        ClassStats.from_loader([(None, good), (None, bad)], progress=False)
    with pytest.raises(ValueError, match="batch 1 have 4 classes"):
        ClassStats.from_loader([(None, good), (None, torch.zeros(2, 4))], progress=False)
    with pytest.raises(TypeError, match="labels=lambda batch"):
        ClassStats.from_loader([torch.zeros(2, 3)], progress=False)
    with pytest.raises(ValueError, match="no batch"):
        ClassStats.from_loader([], progress=False)
