"""The Triton kernel's tile loops against the reference: the column loop (one tile or two an
iteration, whole rows or column chunks), narrow column tiles and the persistent grid, on tiles
forced small enough for the interpreter (helpers: test_triton_backend.py)."""
import pytest

from test_triton_backend import COCO, _check, _inputs, _stats, tk

# the interpreter evaluates masked lanes too (1/0, exp overflow): numpy warns, results are selected away
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.mark.parametrize("split", [None, 3])
@pytest.mark.parametrize("rows_per_program", [1, 2])
def test_column_tile_loop(split, rows_per_program):
    """C > one tile: the column loop (16-wide tiles), with the statistics pass inline or, when the
    columns are split over programs, from the statistics kernel."""
    stats = _stats(257, seed=7)
    with tk._force_tiles(one_tile_max_c=0, loop_block_c=16, loop_tile_elems=16 * rows_per_program,
                         split=split, chunk_align=32, stats_block_c=32):
        for i, (cfg, labels) in enumerate([
                (dict(), "uint8"), (dict(weight_norm="by_instance", reduction="none"), "partial"),
                (dict(reweight="CB", cb_mode="average_w", reduction="sum"), "soft"),
                (dict(reweight="CB", cb_mode="average_n", weight_norm="by_instance"), "partial"),
                (dict(reweight="CB", cb_mode="min_n", gamma=0.5), "uint8"),
                (dict(reweight="sqrt_inv", weight_norm="by_batch", reduction="none"), "int64")]):
            z, y = _inputs(5, 257, labels, seed=i)
            _check(stats, z, y, **cfg)


@pytest.mark.parametrize("num_classes, even", [(64, 2), (48, 1)])
def test_column_loop_in_pairs(monkeypatch, num_classes, even):
    """C a multiple of two column tiles: the loop takes two tiles an iteration (EVEN_C = 2), over
    whole rows and over column chunks; three tiles, or plain BCE (a light element), one a time."""
    from dbl_kernels.triton_kernel import tuning

    seen = []
    real = tuning.even_c
    monkeypatch.setattr(tuning, "even_c", lambda *a: seen.append(real(*a)) or seen[-1])
    stats = _stats(num_classes, seed=8)
    for split in (None, 2):
        with tk._force_tiles(one_tile_max_c=0, loop_block_c=16, loop_tile_elems=32, split=split, chunk_align=32,
                             stats_block_c=32):
            for i, (cfg, labels) in enumerate([(dict(), "uint8"), (dict(reduction="none"), "partial"),
                                               (dict(reweight=None, focal=False, logit_reg=False), "uint8")]):
                seen.clear()
                z, y = _inputs(5, num_classes, labels, seed=40 + i)
                _check(stats, z, y, **cfg)
                assert set(seen) == {1 if i == 2 else even}, (split, cfg, seen)


@pytest.mark.parametrize("block_c", [16, 32])
def test_narrow_column_tiles(block_c):
    """C = 80 in 16-wide column tiles (unrolled: C is 5 of them; what the autotuner picks) or 32-wide
    ones (the column loop with a masked tail), the statistics pass re-reading the labels."""
    with tk._force_tiles(row_block_c=block_c, row_tile_elems=8 * block_c):
        for i, (cfg, labels) in enumerate([(dict(), "uint8"), (dict(reweight="CB", cb_mode="min_n"), "partial"),
                                           (dict(weight_norm="by_instance", reduction="none"), "soft")]):
            z, y = _inputs(19, 80, labels, seed=20 + i)
            _check(COCO, z, y, **cfg)


def test_persistent_programs():
    """Programs loop over several row tiles (the persistent grid), the last tile partly past N, and
    the last program to finish adds the partial sums."""
    z, y = _inputs(37, 80, "partial", seed=14)
    with tk._force_tiles(row_tile_elems=64, row_block_c=16, programs=3):
        for reduction in ("mean", "sum", "none"):
            _check(COCO, z, y, reduction=reduction)
