"""The training demo: its data builder, its mAP and a short end-to-end run."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dbl_kernels import AsymmetricLoss, ClassStats, DistributionBalancedLoss
from dbl_kernels.demo import data as demo_data
from dbl_kernels.demo import report as demo_report
from dbl_kernels.demo.metrics import average_precision, class_splits, per_class_ap, split_map
from dbl_kernels.demo.train import LOSSES


def needs_sklearn():
    pytest.importorskip("sklearn", reason="the demo's data set needs scikit-learn")


@pytest.fixture(scope="module")
def dataset():
    needs_sklearn()
    return demo_data.build_dataset(seed=3)


@pytest.fixture(scope="module")
def clean_dataset():
    needs_sklearn()
    return demo_data.build_dataset(seed=3, noise=0.0)


# -- data builder ------------------------------------------------------------------------------
def test_default_profile_is_coco_mlt_long_tail():
    freq = np.sort(ClassStats.preset("coco-mlt").class_freq)[::-1]
    profile = demo_data.coco_mlt_profile()
    assert profile.tolist() == [1128, 207, 126, 87, 44, 32, 20, 14, 9, 6]
    assert set(profile.tolist()) <= set(freq.tolist())
    assert profile[0] == freq[0] and profile[-1] == freq[-1]


def test_training_frequencies_are_the_requested_ones(dataset):
    counts = dataset.train_labels.sum(0)
    np.testing.assert_array_equal(counts, dataset.class_counts)
    assert sorted(dataset.class_counts.tolist()) == sorted(demo_data.coco_mlt_profile().tolist())
    requested = np.array([3, 700, 5, 40, 12, 90, 8, 150, 25, 60])
    built = demo_data.build_dataset(seed=1, class_counts=requested, num_test=50)
    np.testing.assert_array_equal(built.train_labels.sum(0), requested)


def test_label_sets_co_occur_like_coco(dataset):
    labels = dataset.train_labels.astype(bool)
    sizes = labels.sum(1)
    assert sizes.min() >= 1 and sizes.max() <= 3
    counts = dataset.class_counts
    for c in np.flatnonzero(counts < 20):
        # Images of a tail class often show a more frequent class too, never a rarer one.
        rows = labels[labels[:, c]]
        others = rows & ~np.eye(len(counts), dtype=bool)[c]
        assert others.any(1).mean() > 0.3
        assert not others[:, counts < counts[c]].any()


def test_test_set_is_balanced(dataset):
    positives = dataset.test_labels.sum(0)
    assert positives.min() > 0.75 * positives.mean() and positives.max() < 1.25 * positives.mean()


def test_no_source_image_in_both_sets(dataset):
    train_used = np.unique(dataset.train_slots[dataset.train_slots >= 0])
    test_used = np.unique(dataset.test_slots[dataset.test_slots >= 0])
    assert np.intersect1d(dataset.train_sources, dataset.test_sources).size == 0
    assert np.isin(train_used, dataset.train_sources).all() and np.isin(test_used, dataset.test_sources).all()
    assert np.intersect1d(train_used, test_used).size == 0
    # Nor the same pixels under two indices.
    flat = dataset.source_images.reshape(len(dataset.source_images), -1)
    train_px = {flat[i].tobytes() for i in train_used}
    assert not any(flat[i].tobytes() in train_px for i in test_used)


@pytest.mark.parametrize("split", ["train", "test"])
def test_labels_are_the_digits_shown(clean_dataset, split):
    images = getattr(clean_dataset, f"{split}_images")
    labels = getattr(clean_dataset, f"{split}_labels")
    slots = getattr(clean_dataset, f"{split}_slots")
    src, targets = clean_dataset.source_images, clean_dataset.source_targets
    for i in range(0, len(images), 7):
        shown = set()
        for s in range(demo_data.SLOTS):
            r, c = 8 * (s // 2), 8 * (s % 2)
            patch = images[i, r:r + 8, c:c + 8]
            if slots[i, s] < 0:
                assert not patch.any()
            else:
                np.testing.assert_array_equal(patch, src[slots[i, s]])
                shown.add(int(targets[slots[i, s]]))
        assert set(np.flatnonzero(labels[i]).tolist()) == shown


def test_noise_leaves_the_composition_alone(dataset, clean_dataset):
    np.testing.assert_array_equal(dataset.train_slots, clean_dataset.train_slots)
    np.testing.assert_array_equal(dataset.test_labels, clean_dataset.test_labels)
    diff = dataset.train_images - clean_dataset.train_images
    assert 0.05 < np.abs(diff).mean() < 0.15
    assert dataset.train_images.min() >= 0 and dataset.train_images.max() <= 1


# -- mAP ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("scores, labels, expected", [
    ([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0], 0.5 * 1 + 0.5 * 2 / 3),
    ([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0], 0.5 * 1 + 0.5 * 2 / 3),  # a tie is one threshold
    ([0.8, 0.8, 0.3], [0, 1, 1], 0.5 * 0.5 + 0.5 * 2 / 3),
    ([0.1, 0.2, 0.3], [1, 1, 1], 1.0),
    ([0.3, 0.2, 0.1], [0, 0, 1], 1 / 3),
])
def test_average_precision_by_hand(scores, labels, expected):
    assert average_precision(scores, labels) == pytest.approx(expected, abs=1e-12)


def test_average_precision_without_positives_is_nan():
    assert np.isnan(average_precision([0.2, 0.1], [0, 0]))


def test_average_precision_matches_sklearn():
    needs_sklearn()
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    scores = np.round(rng.random((300, 12)), 2)  # rounded: plenty of ties
    labels = (rng.random((300, 12)) < np.linspace(0.02, 0.6, 12)).astype(np.uint8)
    expected = [average_precision_score(labels[:, c], scores[:, c]) for c in range(12)]
    np.testing.assert_allclose(per_class_ap(scores, labels), expected, rtol=0, atol=1e-12)


def test_splits_follow_the_paper_thresholds():
    counts = np.array([1128, 101, 100, 20, 19, 6])
    splits = class_splits(counts)
    assert splits["head"].tolist() == [0, 1]
    assert splits["medium"].tolist() == [2, 3]
    assert splits["tail"].tolist() == [4, 5]
    maps = split_map(np.array([1.0, 0.5, 0.5, np.nan, 0.2, 0.4]), splits)
    assert maps == pytest.approx({"total": 52.0, "head": 75.0, "medium": 50.0, "tail": 30.0})


# -- the compared losses -----------------------------------------------------------------------
def test_bce_and_focal_entries_are_plain_bce_and_focal():
    torch.manual_seed(0)
    logits = torch.randn(16, 10, dtype=torch.float64)
    labels = (torch.rand(16, 10) < 0.3).double()
    stats = ClassStats.from_counts(np.arange(1, 11) * 10.0, train_num=200)
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    loss = LOSSES["BCE"].build(stats, "reference")
    torch.testing.assert_close(loss(logits, labels), bce.mean())
    focal = LOSSES["focal"].build(stats, "reference")
    torch.testing.assert_close(focal(logits, labels), (2.0 * (1 - torch.exp(-bce)) ** 2 * bce).mean())
    assert LOSSES["DB-focal"].build(stats, "auto").config == DistributionBalancedLoss(stats).config


def test_asl_entries_are_the_papers_defaults_averaged():
    torch.manual_seed(1)
    logits = torch.randn(16, 10, dtype=torch.float64) * 3
    labels = (torch.rand(16, 10) < 0.3).double()
    stats = ClassStats.from_counts(np.arange(1, 11) * 10.0, train_num=200)
    # ASL written out (Ridnik et al., eq. 1-4): gamma_neg 4, gamma_pos 1, margin 0.05; here a mean
    p = torch.sigmoid(logits)
    p_m = (p - 0.05).clamp(min=0)
    element = -(labels * (1 - p) * torch.log(p) + (1 - labels) * p_m ** 4 * torch.log(1 - p_m))
    asl = LOSSES["ASL"].build(stats, "reference")
    assert isinstance(asl, AsymmetricLoss)
    torch.testing.assert_close(asl(logits, labels), element.mean())
    # DB-ASL: DB-focal's defaults (re-balancing, NTR, balance_param 2, gamma 2 for positives) and
    # ASL's negatives; on positives alone it is DB-focal, on negatives it is not
    db_asl, db = LOSSES["DB-ASL"].build(stats, "reference"), LOSSES["DB-focal"].build(stats, "reference")
    expected = DistributionBalancedLoss(stats, gamma_neg=4, clip=0.05).config
    assert db_asl.config == expected and expected.gamma == 2.0 and expected.reweight == "rebalance"
    assert expected.logit_reg and expected.balance_param == 2.0 and expected.reduction == "mean"
    ones = torch.ones_like(labels)
    torch.testing.assert_close(db_asl(logits, ones), db(logits, ones))
    assert not torch.allclose(db_asl(logits, labels), db(logits, labels))
    for loss in LOSSES.values():  # one reduction for every loss: the mean over the N x C labels
        built = loss.build(stats, "reference")
        torch.testing.assert_close(built(logits, labels), built(logits, labels, reduction="sum") / labels.numel())


def test_paired_gains_by_hand():
    runs = [{"seed": seed, "sampler": "uniform", "loss": loss, "map": {"total": total, "tail": tail}}
            for seed, loss, total, tail in [(0, "DB-focal", 80.0, 60.0), (0, "BCE", 78.0, 61.0), (0, "ASL", 79.0, 55.0),
                                            (0, "DB-ASL", 81.0, 58.0), (1, "DB-focal", 82.0, 70.0),
                                            (1, "BCE", 79.0, 64.0), (1, "ASL", 83.0, 66.0), (1, "DB-ASL", 82.5, 67.0)]]
    pairs = demo_report.comparisons(["BCE", "DB-focal", "ASL", "DB-ASL"])
    assert pairs == [("DB-focal", "BCE"), ("DB-focal", "ASL"), ("DB-focal", "DB-ASL"), ("DB-ASL", "ASL")]
    gains = demo_report.paired_gains(runs, pairs)
    assert gains["DB-focal"]["uniform"]["BCE"] == {"total": (2.5, 2, 2), "tail": (2.5, 1, 2)}
    assert gains["DB-focal"]["uniform"]["ASL"] == {"total": (0.0, 1, 2), "tail": (4.5, 2, 2)}
    assert gains["DB-ASL"]["uniform"] == {"ASL": {"total": (0.75, 1, 2), "tail": (2.0, 2, 2)}}
    table = demo_report.gains_table(gains)
    assert "uniform      DB-ASL    ASL          +0.8 (1/2)    +2.0 (2/2)" in table
    assert demo_report.comparisons(["BCE", "ASL"]) == [] and demo_report.comparisons(["ASL", "DB-ASL"]) == [
        ("DB-ASL", "ASL")]


# -- end to end --------------------------------------------------------------------------------
def test_short_run_writes_table_plots_and_results(tmp_path, capsys):
    needs_sklearn()
    pytest.importorskip("matplotlib")
    pytest.importorskip("tqdm")
    from dbl_kernels.demo import main

    threads = torch.get_num_threads()
    assert main(["--seeds", "2", "--epochs", "2", "--out", str(tmp_path)]) == 0
    assert torch.get_num_threads() == threads
    out = capsys.readouterr().out
    assert "class-aware  DB-ASL" in out and "tail < 20 (3)" in out and "Paired by seed" in out
    for name in ("per_class_ap.png", "map_by_split.png"):
        assert (tmp_path / name).stat().st_size > 5000 and str(tmp_path / name) in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["seeds"] == [0, 1] and results["settings"]["epochs"] == 2
    assert set(results["summary"]) == {"uniform", "class-aware"}
    assert set(results["summary"]["uniform"]) == set(LOSSES)
    assert len(results["runs"]) == 2 * 2 * len(LOSSES)
    for run in results["runs"]:
        assert 0 <= run["map"]["tail"] <= 100 and len(run["per_class_ap"]) == 10
        mean, std = results["summary"][run["sampler"]][run["loss"]]["total"]
        assert 0 <= mean <= 100 and std >= 0
    assert results["losses"]["ASL"] == {"class": "AsymmetricLoss",
                                        "options": dict(gamma_neg=4, gamma_pos=1, clip=0.05, reduction="mean")}

    def tails(sampler, loss):
        return [r["map"]["tail"] for r in results["runs"] if r["sampler"] == sampler and r["loss"] == loss]
    for first, second in [("DB-focal", "BCE"), ("DB-focal", "DB-ASL"), ("DB-ASL", "ASL")]:
        gains = results["paired_gains"][first]["class-aware"][second]["tail"]
        expected = np.subtract(tails("class-aware", first), tails("class-aware", second))
        assert gains[0] == pytest.approx(np.mean(expected)) and gains[1] == np.sum(expected > 0) and gains[2] == 2


def test_missing_extras_and_bad_backend_give_clear_errors(monkeypatch, capsys, tmp_path):
    from dbl_kernels.demo import cli

    monkeypatch.setattr(cli, "missing_extras", lambda: ["tqdm"])
    assert cli.main(["--quick", "--out", str(tmp_path)]) == 2
    assert "pip install tqdm" in capsys.readouterr().err
    monkeypatch.setattr(cli, "missing_extras", lambda: [])
    assert cli.main(["--quick", "--device", "cpu", "--backend", "cuda", "--out", str(tmp_path)]) == 2
    assert "backend='cuda'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--losses", "BCE,hinge"])


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "dbl_kernels.demo", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0
    for option in ("--seeds", "--epochs", "--backend", "--out", "--quick"):
        assert option in result.stdout
