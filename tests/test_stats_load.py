"""ClassStats.load on damaged or wrong files: a ValueError that names the file and what was expected."""
import json
import pickle
import re

import numpy as np
import pytest

from dbl_kernels import ClassStats

from conftest import shared_file

COUNTS = "class_freq' and 'neg_class_freq"


def _npz_bytes(tmp_path, **arrays):
    np.savez(tmp_path / "tmp.npz", **arrays)
    return (tmp_path / "tmp.npz").read_bytes()


def _write(tmp_path, name, content):
    path = tmp_path / name
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


def _expect_error(path, *fragments):
    with pytest.raises(ValueError) as info:
        ClassStats.load(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


@pytest.mark.parametrize("content", [b"", b"not an archive at all", b"PK\x03\x04 truncated zip"],
                         ids=["empty", "garbage", "truncated-zip"])
def test_npz_that_is_no_archive(tmp_path, content):
    error = _expect_error(_write(tmp_path, "stats.npz", content), "is not a valid .npz archive (numpy.savez output)",
                          COUNTS)
    assert "allow_pickle" not in str(error) and error.__cause__ is not None


def test_npz_with_a_damaged_member(tmp_path):
    freq = np.arange(1.0, 4.0)
    good = _npz_bytes(tmp_path, class_freq=freq, neg_class_freq=10.0 - freq)
    # flip bytes of the stored (uncompressed) counts: the zip's CRC check fails on reading them
    at = good.index(freq.tobytes())
    damaged = good[:at] + bytes(b ^ 0xFF for b in good[at:at + 8]) + good[at + 8:]
    _expect_error(_write(tmp_path, "stats.npz", damaged), "'class_freq'", "damaged", COUNTS)


def test_npz_holding_object_arrays(tmp_path):
    path = _write(tmp_path, "stats.npz", _npz_bytes(
        tmp_path, class_freq=np.array([3, "x", None], dtype=object), neg_class_freq=np.ones(3)))
    error = _expect_error(path, "entry 'class_freq' holds Python objects (an object array)", COUNTS)
    assert "allow_pickle" not in str(error)


def test_npz_holding_one_npy_array(tmp_path):
    np.save(tmp_path / "a.npy", np.ones(3))
    path = _write(tmp_path, "stats.npz", (tmp_path / "a.npy").read_bytes())
    _expect_error(path, "holds a single .npy array, not a .npz archive", COUNTS)


def test_npz_without_the_counts(tmp_path):
    path = _write(tmp_path, "stats.npz", _npz_bytes(tmp_path, labels=np.ones((2, 3))))
    _expect_error(path, "has no 'class_freq' entry (found ['labels'])", COUNTS)


def test_npz_with_text_counts_or_wrong_shapes(tmp_path):
    path = _write(tmp_path, "a.npz", _npz_bytes(tmp_path, class_freq=np.array(["1", "2"]), train_num=10))
    _expect_error(path, "'class_freq' must hold numbers, got <U1 values")
    path = _write(tmp_path, "b.npz", _npz_bytes(tmp_path, class_freq=np.ones((2, 2)), train_num=10))
    _expect_error(path, "class_freq must be a non-empty 1-D array", "(2, 2)")
    path = _write(tmp_path, "c.npz", _npz_bytes(tmp_path, class_freq=np.ones(3), train_num=np.array([10, 10])))
    _expect_error(path, "train_num must be one number", "(2,)")
    path = _write(tmp_path, "d.npz", _npz_bytes(tmp_path, class_freq=np.ones(3), neg_class_freq=np.ones(2)))
    _expect_error(path, "neg_class_freq has shape (2,) but class_freq has (3,)")


def test_npz_beside_other_entries_loads(tmp_path):
    # only the counts are read: a label file with names and labels beside them is fine
    path = _write(tmp_path, "stats.npz", _npz_bytes(
        tmp_path, class_freq=np.array([2.0, 5.0]), neg_class_freq=np.array([8.0, 5.0]),
        names=np.array(["a", None], dtype=object)))
    stats = ClassStats.load(path)
    np.testing.assert_array_equal(stats.class_freq, [2.0, 5.0])
    assert stats.train_num == 10


def test_shared_label_file_loads_as_stats():
    stats = ClassStats.load(shared_file("data/voc_mlt_train_labels.npz"))
    assert stats.num_classes == 20 and stats.train_num == 1142


@pytest.mark.parametrize("text", ['{"class_freq": [1, 2', "\u00e9t\u00e9"], ids=["truncated", "not-json"])
def test_json_that_is_not_json(tmp_path, text):
    error = _expect_error(_write(tmp_path, "stats.json", text), "is not valid JSON", COUNTS)
    assert isinstance(error.__cause__, json.JSONDecodeError)


def test_json_not_utf8(tmp_path):
    error = _expect_error(_write(tmp_path, "stats.json", b"\xff\xfe{}"), "is not valid JSON")
    assert isinstance(error.__cause__, UnicodeDecodeError)


@pytest.mark.parametrize("value, fragment", [
    ([1, 2, 3], "holds a JSON list, expected an object of"),
    ({"neg_class_freq": [1, 2]}, "has no 'class_freq' entry (found ['neg_class_freq'])"),
    ({"class_freq": [1, "two"], "train_num": 10}, "'class_freq' must hold numbers"),
    ({"class_freq": [1, None], "train_num": 10}, "'class_freq' must hold numbers, got object"),
    ({"class_freq": [[1], [1, 2]], "train_num": 10}, "'class_freq' must be a 1-D array of numbers, not a ragged"),
    ({"class_freq": [1, 2], "train_num": "ten"}, "'train_num' must hold numbers"),
    ({"class_freq": [1, 2]}, "give neg_class_freq or train_num"),
    ({"class_freq": [1, 20], "train_num": 10}, "classes [1] are positive in every sample"),
])
def test_json_without_valid_counts(tmp_path, value, fragment):
    _expect_error(_write(tmp_path, "stats.json", json.dumps(value)), fragment)


@pytest.mark.parametrize("content", [b"", b"\x80\x04\x95garbage", b"definitely not a pickle"],
                         ids=["empty", "truncated", "garbage"])
def test_pickle_that_is_damaged(tmp_path, content):
    _expect_error(_write(tmp_path, "class_freq.pkl", content), "is not a readable pickle",
                  "a dict of numpy arrays with 'class_freq'")


def test_pickle_of_the_wrong_things(tmp_path):
    _expect_error(_write(tmp_path, "a.pkl", pickle.dumps([1, 2])), "holds a list, expected a dict with 'class_freq'")
    _expect_error(_write(tmp_path, "b.pkl", pickle.dumps({"class_freq": np.array(["x"]), "train_num": 3})),
                  "'class_freq' must hold numbers")


def test_refused_pickle_names_the_file_and_is_both_error_types(tmp_path):
    path = _write(tmp_path, "class_freq.pkl", b"cos\nsystem\n(S'true'\ntR.")  # os.system("true")
    with pytest.raises(pickle.UnpicklingError, match=re.escape(str(path)) + ": refusing to load os.system"):
        ClassStats.load(path)
    _expect_error(path, "refusing to load os.system")


def test_missing_file_is_still_file_not_found(tmp_path):
    for name in ("x.npz", "x.json", "x.pkl"):
        with pytest.raises(FileNotFoundError):
            ClassStats.load(tmp_path / name)
