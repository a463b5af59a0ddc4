"""Benchmark suite: pytest-benchmark timings of each backend, and smoke tests of the benchmark
harness and its scripts (run.py, host_time.py, gpu_checks.py, readme_tables.py).

    pytest benchmarks --benchmark-disable            # smoke only (what CI runs): each timing once
    pytest benchmarks/test_bench.py --benchmark-only --benchmark-autosave   # regression timings
"""
from __future__ import annotations

import datetime
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_data  # noqa: E402
import gpu_checks  # noqa: E402
import host_time  # noqa: E402
import readme_tables  # noqa: E402
import run as bench  # noqa: E402
from harness import cases, envinfo, measure, report, timing  # noqa: E402

import dbl_kernels  # noqa: E402
from dbl_kernels import DistributionBalancedLoss  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _backends(device):
    # The Triton interpreter on CPU tensors is a correctness tool, not something to time.
    names = ["reference"] + envinfo.fused_backends(torch.device(device))
    return [(device, b) for b in names]


# ------------------------------------------------------------------------------------------------
# pytest-benchmark: one timing per backend and shape
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", [p for d in DEVICES for p in _backends(d)])
@pytest.mark.parametrize("n,c", [(512, 80), (64, 9605)])
def test_loss_fwd_bwd(benchmark, device, backend, n, c):
    gen = torch.Generator().manual_seed(n + c)
    labels = bench_data.make_labels(n, c, gen).to(device)
    logits = bench_data.make_logits(n, c, torch.float32, "cpu", gen).to(device)
    stats = bench_data.stats_for(c)
    fused = DistributionBalancedLoss(stats, backend=backend, validate_labels=False).to(device)
    leaf = logits.clone().requires_grad_(True)

    def step():  # as a training step runs it
        leaf.grad = None
        loss = fused(leaf, labels)
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return loss, leaf.grad

    loss, grad = benchmark(step)
    ref = DistributionBalancedLoss(stats, backend="reference", validate_labels=False).to(device)
    x = logits.clone().requires_grad_(True)
    ref_loss = ref(x, labels)
    (ref_grad,) = torch.autograd.grad(ref_loss, x)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-4 * float(ref_grad.abs().max()))


# ------------------------------------------------------------------------------------------------
# The benchmark program
# ------------------------------------------------------------------------------------------------
def _smoke_args(device, out, *extra):
    args = ["--device", device, "--suite", "smoke", "--out", str(out), "--min-time", "0", "--min-reps", "2",
            "--max-reps", "3", "--no-progress", "--labels-dtypes", "uint8"]
    if device == "cuda":
        args += ["--logits-dtypes", "bf16"]
    return args + list(extra)


@pytest.fixture(scope="module", params=DEVICES)
def smoke_run(request, tmp_path_factory):
    """One real run of the benchmark program (baselines, torch.compile, every fused backend)."""
    device = request.param
    out = tmp_path_factory.mktemp(f"bench-{device}") / f"2026-01-01-{device}"
    assert bench.main(_smoke_args(device, out)) == 0
    records, meta = report.load_results(out)
    return device, out, records, meta


def test_run_writes_every_output(smoke_run):
    device, out, records, meta = smoke_run
    for name in ("results.json", "results.csv", "summary.md", "throughput.png"):
        assert (out / name).stat().st_size > 0, name
    backends = {r["backend"] for r in records}
    assert backends == {"eager", "compile", "bce"} | set(envinfo.fused_backends(torch.device(device)))
    assert {r["mode"] for r in records} == {"fwd", "fwd+bwd"}
    for r in records:
        assert set(cases.FIELDS) <= set(r)
        assert r["status"] == "ok", r
        assert r["device"] == device and r["torch"] == torch.__version__ and r["N"] == 16 and r["C"] == 80
        assert 0 < r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert math.isclose(r["elements_per_s"], 16 * 80 / (r["median_ms"] * 1e-3))
        assert math.isclose(r["roofline_fraction"], r["gbytes_per_s"] / meta["copy_gbytes_per_s"])
        if r["backend"] == "bce":  # another loss: nothing to compare
            assert r["max_rel_err"] is None and r["host_ratio_vs_bce"] == 1.0
        else:
            assert r["max_rel_err"] < (2e-2 if r["logits_dtype"] == "bf16" else 1e-4)
        assert r["speedup_vs_eager"] > 0 and r["speedup_vs_compile"] > 0
        assert r["host_us"] > 0 and r["host_ratio_vs_bce"] > 0
        if r["backend"] == "eager":
            assert r["speedup_vs_eager"] == 1.0
        if device == "cuda":
            assert r["device_timing"], r  # how the device time was got, or why capture failed
            if r["backend"] in envinfo.fused_backends(torch.device(device)) + ["compile"]:
                assert r["device_us"] > 0 and r["roofline_basis"] == "device", r
        else:
            assert r["device_us"] is None and r["roofline_basis"] == "user"
    fwd_bwd = next(r for r in records if r["mode"] == "fwd+bwd")
    logit_bytes = 2 if fwd_bwd["logits_dtype"] == "bf16" else 4
    assert fwd_bwd["bytes_moved"] == 16 * 80 * (2 * logit_bytes + 1)
    assert meta["copy_gbytes_per_s"] > 0 and meta["auto_backend"] in dbl_kernels.available_backends()
    if device == "cuda":
        assert all(r["peak_mem_bytes"] is not None and r["peak_mem_bytes"] >= 0 for r in records)
    summary = (out / "summary.md").read_text()
    assert meta["device_name"] in summary and "| smoke | 16 | 80 |" in summary
    assert "## Time split" in summary and "| bce |" in summary


def test_run_report_rerenders(smoke_run, capsys):
    _, out, records, _ = smoke_run
    assert bench.main(["--report", str(out), "--short", "--no-plot"]) == 0
    printed = capsys.readouterr().out
    assert "smoke" in printed and "auto=" in printed
    assert len(json.loads((out / "results.json").read_text())) == len(records)


def test_run_label_dtypes_and_budget(tmp_path):
    out = tmp_path / "r"
    args = ["--device", "cpu", "--suite", "quick", "--out", str(out), "--min-time", "0", "--min-reps", "1",
            "--max-reps", "1", "--no-progress", "--no-plot", "--backends", "eager,cpu", "--budget-s", "1e-9"]
    assert bench.main(args) == 0
    records, _ = report.load_results(out)
    assert records and all(r["status"] == "skipped: time budget" for r in records)
    args = ["--device", "cpu", "--suite", "quick", "--out", str(out), "--min-time", "0", "--min-reps", "1",
            "--max-reps", "1", "--no-progress", "--no-plot", "--backends", "eager,cpu,triton",
            "--labels-dtypes", "bool,float", "--modes", "fwd+bwd"]
    assert bench.main(args) == 0
    records, _ = report.load_results(out)
    assert {r["labels_dtype"] for r in records} == {"bool", "float"}
    assert {r["backend"] for r in records} <= {"eager", "cpu"}  # no interpreter timings on the CPU
    assert all(r["status"] == "ok" and r["max_rel_err"] < 1e-4 for r in records), records
    for bad in (["--labels-dtypes", "int7"], ["--backends", "tritn"], ["--suite", "coco,nope"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def test_asl_rows_beside_db_focal(tmp_path):
    """--losses db-focal,asl: the ASL rows time the fused AsymmetricLoss against the paper's formula
    (eager and compiled) in the same run, with speedups against their own baselines."""
    out = tmp_path / "asl"
    args = _smoke_args("cpu", out, "--losses", "db-focal,asl", "--modes", "fwd+bwd", "--no-plot")
    assert bench.main(args) == 0
    records, meta = report.load_results(out)
    assert meta["losses"] == ["db-focal", "asl"]
    by = {(r["loss"], r["backend"]): r for r in records}
    fused = envinfo.fused_backends(torch.device("cpu"))
    assert set(by) == {(loss, b) for loss in ("db-focal", "asl") for b in ["eager", "compile", "bce"] + fused}
    for (loss, backend), r in by.items():
        assert r["status"] == "ok" and r["mode"] == "fwd+bwd", r
        assert r["config"] == cases.LOSS_CONFIGS[loss]
        assert r["speedup_vs_eager"] == pytest.approx(by[(loss, "eager")]["median_ms"] / r["median_ms"])
        assert r["host_ratio_vs_bce"] == pytest.approx(r["host_us"] / by[(loss, "bce")]["host_us"])
        if backend != "bce":
            assert r["max_rel_err"] < 1e-4, r
        # the kernels do not compute asymmetric focusing yet: the fused ASL rows ran the reference
        assert r["fused_kernel"] == ((loss == "db-focal") if backend in fused else None)
    summary = (out / "summary.md").read_text()
    assert "## db-focal: coco-mlt defaults" in summary and "## asl: Ridnik et al.'s defaults" in summary
    asl_table = summary.split("## asl:")[1]
    assert "| smoke | 16 | 80 | fp32 | uint8 | fwd+bwd |" in asl_table and report.REFERENCE_MARK + " |" in asl_table
    assert "### Time split (forward + backward), asl" in asl_table
    short = report.short_table(records, meta)
    assert "smoke/asl" in short and "smoke/db-focal" in short
    # the main table and the README generator's pivot stay DB-focal's
    assert {r["loss"] for rows in report.pivot(records).values() for r in rows.values()} == {"db-focal"}
    assert readme_tables.compact_rows(records)[1][0][2]["eager"]["loss"] == "db-focal"


def test_asl_formula_is_the_paper():
    """The asl baseline against the package's reference ASL (exact logs) and a value by hand."""
    gen = torch.Generator().manual_seed(5)
    x = bench_data.make_logits(32, 80, torch.float64, "cpu", gen)
    y = bench_data.make_labels(32, 80, gen)
    ours = dbl_kernels.AsymmetricLoss(backend="reference")
    for fn_labels in (y, y.double()):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        theirs, mine = measure.asl_formula(xa, fn_labels), ours(xb, y)
        theirs.backward()
        mine.backward()
        torch.testing.assert_close(theirs, mine, rtol=1e-12, atol=0)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-10, atol=1e-14)
    # one positive at p = 0.8 and one negative at p = 0.3 (margin 0.05: p_m = 0.25)
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    by_hand = -(0.2 * math.log(0.8)) - 0.25 ** 4 * math.log(0.75)
    value = measure.asl_formula(torch.tensor([[logit(0.8), logit(0.3)]], dtype=torch.float64),
                                torch.tensor([[1, 0]], dtype=torch.uint8))
    assert float(value) == pytest.approx(by_hand, rel=1e-12)
    # below the margin a negative costs nothing; half logits are computed in fp32
    assert float(measure.asl_formula(torch.tensor([[logit(0.04)]]), torch.zeros(1, 1))) == 0.0
    assert measure.asl_formula(x.bfloat16(), y).dtype == torch.float32
    assert measure.label_form(cases.Case("s", 1, 1, "bf16", "uint8", "fwd", "asl"), "eager") == torch.float32
    assert measure.label_form(cases.Case("s", 1, 1, "bf16", "uint8", "fwd", "asl"), "cpu") is False
    assert measure.label_form(cases.Case("s", 1, 1, "bf16", "uint8", "fwd"), "eager") is False


def test_loss_axis_of_cases_and_speedups():
    asl = cases.suite_cases("asl", ["fp32"])
    assert {c.loss for c in asl} == {"db-focal", "asl"} and {c.mode for c in asl} == {"fwd+bwd"}
    assert [(c.N, c.C) for c in asl if c.loss == "asl"] == cases.ASL_SHAPES
    assert {c.loss for c in cases.suite_cases("coco", ["fp32"])} == {"db-focal"}
    coco = cases.suite_cases("coco", ["fp32"], losses=["asl", "db-focal"])
    assert len(coco) == 2 * len(cases.suite_cases("coco", ["fp32"]))
    ordered = cases.order_cases(coco)
    assert len(ordered) == len(coco)  # the same shape under two losses is two cases
    for group in {c.group for c in ordered}:  # one torch.compile graph per group: its cases back to back
        where = [i for i, c in enumerate(ordered) if c.group == group]
        assert where == list(range(where[0], where[-1] + 1))
    with pytest.raises(ValueError, match="unknown loss"):
        cases.suite_cases("quick", ["fp32"], losses=["hinge"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--losses", "asl,hinge"])

    def rec(loss, backend, ms):
        return dict(suite="s", N=16, C=80, logits_dtype="fp32", labels_dtype="uint8", mode="fwd+bwd",
                    backend=backend, median_ms=ms, host_us=ms * 100, device_us=None, loss=loss)
    records = [rec("db-focal", "eager", 4.0), rec("db-focal", "cpu", 1.0), rec("asl", "eager", 6.0),
               rec("asl", "cpu", 3.0), rec(None, "compile", 2.0)]  # None: a record from before the loss axis
    report.add_speedups(records)
    assert records[1]["speedup_vs_eager"] == 4.0 and records[3]["speedup_vs_eager"] == 2.0
    assert records[1]["speedup_vs_compile"] == 2.0 and records[3]["speedup_vs_compile"] is None
    assert report.losses_in(records[2:]) == ["db-focal", "asl"] and report.loss_of(records[4]) == "db-focal"


def test_default_out_is_untracked(tmp_path, monkeypatch):
    """Without --out a run writes under ./dbl_bench (ignored by git), never into benchmarks/results."""
    out = envinfo.default_out(torch.device("cpu"), cwd=tmp_path)
    assert out.parent == tmp_path / "dbl_bench" and out.name.startswith(datetime.date.today().isoformat() + "-cpu")
    assert "dbl_bench/" in (HERE.parent / ".gitignore").read_text().split()
    committed = {p: p.stat().st_mtime_ns for p in (HERE / "results").rglob("*")}
    monkeypatch.chdir(tmp_path)
    args = ["--device", "cpu", "--suite", "smoke", "--backends", "bce", "--modes", "fwd", "--min-time", "0",
            "--min-reps", "1", "--max-reps", "1", "--no-progress", "--no-plot"]
    assert bench.main(args) == 0
    assert report.load_results(out)[0][0]["backend"] == "bce"
    assert {p: p.stat().st_mtime_ns for p in (HERE / "results").rglob("*")} == committed


def test_suites_and_bytes():
    quick = cases.order_cases(cases.suite_cases("quick", ["fp32"]))
    assert len({(c.inputs_key, c.mode) for c in quick}) == len(quick)
    assert {c.labels_dtype for c in quick} == {"uint8", "bool", "float"}
    coco = cases.suite_cases("coco", ["fp32", "bf16"])
    assert {c.N for c in coco} == {256, 1024, 4096, 16384, 65536} and {c.C for c in coco} == {80}
    assert {c.C for c in cases.suite_cases("xmc", ["fp32"])} == {131072, 1048576}
    both = cases.order_cases(cases.suite_cases("quick", ["fp32"]) + cases.suite_cases("coco", ["fp32"]))
    assert {c.N for c in both if c.suite == "coco" and c.labels_dtype == "uint8"} == {256, 1024, 4096, 16384, 65536}
    assert not [c for c in both if c.suite == "quick" and c.C == 80 and c.labels_dtype == "uint8"]
    assert all(c.N * c.C >= cases.TARGET_ELEMENTS for c in cases.suite_cases("targets", ["bf16"]))
    perf = cases.suite_cases("perf", ["fp32", "bf16"])
    assert [(c.N, c.C) for c in perf] == [(1 << 20, 80), (8192, 9605), (512, 131072), (256, 80)]
    assert {(c.logits_dtype, c.labels_dtype, c.mode) for c in perf} == {("bf16", "uint8", "fwd+bwd")}
    assert sum(c.N * c.C >= cases.TARGET_ELEMENTS for c in perf) == 3
    # the target before 256 x 80: Triton's autotuner would keep the tiles the first C = 80 shape got
    assert [(c.N, c.C) for c in cases.order_cases(perf)][:2] == [(1 << 20, 80), (256, 80)]
    case = cases.Case("x", 10, 8, "bf16", "bool", "fwd+bwd")
    assert cases.bytes_moved(case) == 80 * (2 + 1 + 2) and cases.input_bytes(case) == 80 * 3
    assert cases.bytes_moved(cases.Case("x", 10, 8, "fp32", "float", "fwd")) == 80 * 8
    assert cases.n_input_sets(1 << 10, 32 << 20, 1 << 30) == 8
    assert cases.n_input_sets(1 << 28, 32 << 20, 1 << 30) == 2
    assert cases.n_input_sets(1 << 30, 32 << 20, 1 << 30) == 1
    with pytest.raises(ValueError, match="unknown suite 'nope'"):
        cases.suite_cases("nope", ["fp32"])


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------
def test_step_is_a_training_step():
    """fwd+bwd runs x.grad = None; loss = fn(x, y); loss.backward() on a leaf: the gradient is
    the loss's, not an accumulation over calls."""
    gen = torch.Generator().manual_seed(3)
    x, y = bench_data.make_logits(8, 80, torch.float32, "cpu", gen), bench_data.make_labels(8, 80, gen)
    fn = DistributionBalancedLoss(bench_data.stats_for(80), backend="reference")
    step = measure.Step(fn, "fwd+bwd", [(x, y)])
    _, first = step(0)
    loss, grad = step(0)
    leaf = step.pairs[0][0]
    assert leaf.is_leaf and leaf.grad is grad and not loss.requires_grad
    xr = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(fn(xr, y), xr)
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(grad, expected)
    step.clear()
    assert leaf.grad is None
    assert not measure.Step(fn, "fwd", [(x, y)])(0).requires_grad
    bce_step = measure.Step(measure.bce, "fwd+bwd", [(x, y)], float_labels=True)
    assert bce_step.pairs[0][1].dtype == x.dtype
    torch.testing.assert_close(bce_step(0)[0], torch.nn.functional.binary_cross_entropy_with_logits(x, y.float()))


def test_timer_cpu():
    timer = timing.Timer(torch.device("cpu"), min_time=0.0, min_reps=4, max_reps=6)
    calls = []
    times = timer(lambda i: calls.append(i), 3, 100)
    assert 4 <= len(times) <= 6 and all(t >= 0 for t in times)
    assert set(calls) <= {0, 1, 2} and len(set(calls)) > 1  # input sets rotate
    user, host = timer.loop(lambda i: time.sleep(1e-3), 2, reps=3, rounds=2)
    assert len(user) == len(host) == 2 and min(host) >= 1000 and min(user) >= 1.0  # µs and ms
    result = timer.measure(lambda i: calls.append(i), 3, 100)
    assert result["host_us"] > 0 and 0 < result["p20_ms"] <= result["median_ms"] <= result["p80_ms"]
    assert result["device_us"] is None and result["device_timing"] is None
    assert timer.graph(lambda i: None, 1, 1.0) == (None, None, "no CUDA graph: not a CUDA device")
    assert timing.percentiles([3.0, 1.0, 2.0, 4.0, 5.0]) == (3.0, 1.8, 4.2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_graph_capture_failure_is_recorded():
    """A step that syncs the host cannot be captured: the timer says so and does not raise."""
    timer = timing.Timer(torch.device("cuda"), min_time=0.0, min_reps=2, max_reps=3)
    x = torch.ones(4, device="cuda")
    us, calls, how = timer.graph(lambda i: float(x.sum()), 1, 1.0)
    assert us is None and how.startswith("capture failed")
    us, calls, how = timer.graph(lambda i: x * 2, 1, 1.0)
    assert us > 0 and calls >= 2 and how.startswith("cuda graph")


def test_interleaved_rotates_the_order():
    order = []
    steps = {name: (lambda name=name: order.append(name)) for name in "abc"}
    times = timing.interleaved(steps, rounds=3, calls=2)
    assert order == list("aabbcc" "bbccaa" "ccaabb")
    assert all(len(v) == 3 and min(v) >= 0 for v in times.values())


def test_throughput_and_ratios():
    r = dict(N=10, C=8, bytes_moved=400, median_ms=2.0, copy_gbytes_per_s=1.0, device_us=100.0)
    t = report.throughput(r)
    assert t["roofline_basis"] == "device" and math.isclose(t["gbytes_per_s"], 400 / 100e-6 / 1e9)
    assert math.isclose(t["elements_per_s"], 80 / 2e-3) and math.isclose(t["roofline_fraction"], t["gbytes_per_s"])
    t = report.throughput(dict(r, device_us=None))
    assert t["roofline_basis"] == "user" and math.isclose(t["gbytes_per_s"], 400 / 2e-3 / 1e9)

    def rec(backend, ms, host, dev=None, N=16):
        return dict(suite="s", N=N, C=80, logits_dtype="fp32", labels_dtype="uint8", mode="fwd+bwd",
                    backend=backend, median_ms=ms, host_us=host, device_us=dev)
    records = [rec("eager", 4.0, 400.0), rec("compile", 2.0, 300.0, 50.0), rec("bce", 1.0, 100.0, 10.0),
               rec("cpu", 1.0, 150.0, 25.0), rec("cpu", 1.0, 150.0, N=32)]
    report.add_speedups(records)
    mine = records[3]
    assert (mine["speedup_vs_eager"], mine["speedup_vs_compile"]) == (4.0, 2.0)
    assert mine["host_ratio_vs_bce"] == 1.5 and mine["device_speedup_vs_compile"] == 2.0
    assert records[2]["host_ratio_vs_bce"] == 1.0
    assert records[4]["host_ratio_vs_bce"] is None and records[4]["speedup_vs_eager"] is None  # no baseline at N=32
    assert report.best_fused(records) is mine
    split = report.time_split_table(records)
    assert "| 16 | 80 | fp32 | uint8 | cpu | 1.00 | 25.0 | 150 | 1.50 |" in split


def test_autotune_choice():
    before = {(1, (80, 0, 2)): "A"}
    after = {**before, (1, (9605, 0, 2)): "B"}
    assert measure.autotune_choice(before, after, 9605) == "tuned here: B"
    assert measure.autotune_choice(after, after, 80) == "cached: A"
    assert measure.autotune_choice(after, after, 7) is None
    assert measure.autotune_choice(None, after, 80) is None
    assert isinstance(measure.autotune_snapshot(), dict)  # triton is installed with the test extra


def test_targets_table_marks():
    def rec(backend, ms, **kw):
        return dict(dict(suite="targets", N=128, C=1 << 20, logits_dtype="bf16", labels_dtype="uint8",
                         mode="fwd+bwd", backend=backend, median_ms=ms, status="ok"), **kw)
    records = [rec("eager", 100.0), rec("compile", 10.0), rec("bce", 0.5),
               rec("triton", 2.0, roofline_fraction=0.9, speedup_vs_compile=5.0, speedup_vs_eager=50.0),
               rec("cuda", 3.0, roofline_fraction=0.6, speedup_vs_compile=3.3, speedup_vs_eager=33.0),
               dict(rec("triton", 1.0), N=16)]  # too small for the targets
    rows = report.targets_rows(records, "cuda")
    assert [(r["backend"], r["N"]) for r in rows] == [("triton", 128), ("cuda", 128)]
    assert all(rows[0]["checks"].values()) and not rows[1]["checks"]["roofline_fraction"]
    assert rows[0]["fastest"] == "triton" and not rows[0]["auto_is_fastest"]
    table = report.targets_table(records, "cuda")
    assert "0.90 ✓" in table and "0.60 ✗" in table and "device" not in table


# ------------------------------------------------------------------------------------------------
# The CPU host-time script
# ------------------------------------------------------------------------------------------------
def test_host_time_script(tmp_path):
    assert host_time.main(["--rounds", "1", "--calls", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "host_time.json").read_text())
    assert [(s["N"], s["C"]) for s in result["shapes"]] == [(1, 80), (256, 80)]
    for s in result["shapes"]:
        us = s["us_per_call"]
        assert set(us) == set(host_time.VARIANTS) and min(us.values()) > 0
        assert math.isclose(s["ratio_vs_bce"]["dbl"], us["dbl"] / us["bce"])
    assert "| 256 × 80 |" in (tmp_path / "host_time.md").read_text()
    with pytest.raises(SystemExit):
        host_time.main(["--shapes", "256x81"])


# ------------------------------------------------------------------------------------------------
# Label data
# ------------------------------------------------------------------------------------------------
def test_coco_rows_are_real_rows():
    gen = torch.Generator().manual_seed(0)
    rows = bench_data.coco_labels(64, gen)
    matrix = bench_data.coco_label_matrix()
    assert matrix.shape == (1909, 80) and rows.dtype == torch.uint8
    assert all(bool((matrix == row).all(1).any()) for row in rows)
    stats = bench_data.stats_for(80)
    assert stats.train_num == 1909 and (matrix.sum(0).numpy() == stats.class_freq).all()


@pytest.mark.parametrize("c", [9605, 131072])
def test_long_tail_labels(c):
    gen = torch.Generator().manual_seed(1)
    family = bench_data.family_for(c)
    labels = bench_data.make_labels(400, c, gen)
    assert labels.shape == (400, c) and labels.dtype == torch.uint8 and int(labels.max()) == 1
    per_row = labels.sum(1, dtype=torch.float64)
    assert per_row.min() >= 1 and abs(float(per_row.mean()) - family.mean_positives) < 1.5
    stats = bench_data.stats_for(c)
    freq = stats.class_freq
    assert freq.min() >= 1 and freq.max() < stats.train_num and freq.max() / freq.min() > 100  # a long tail
    again = bench_data.make_labels(400, c, torch.Generator().manual_seed(1))
    assert torch.equal(labels, again)


# ------------------------------------------------------------------------------------------------
# GPU checks (their logic, on the CPU)
# ------------------------------------------------------------------------------------------------
def _check_backends():
    return ["reference"] + envinfo.fused_backends(torch.device("cpu"))


def test_config_grid_covers_every_option():
    configs, n_core = gpu_checks.config_grid()
    assert configs[0] == {} and len({json.dumps(c, sort_keys=True) for c in configs}) == len(configs)
    assert len(configs) >= 8 * 3 * 2 * 2 * 3
    for axis, values in gpu_checks.AXES.items():
        for v in values[1:]:
            assert {axis: v} in configs[:n_core]


def test_gpu_checks_logic_on_cpu():
    device = torch.device("cpu")
    backends = _check_backends()
    configs = gpu_checks.check_configs(device, backends, budget_s=2.0)
    assert configs["ok"], configs["failures"][:3]
    assert configs["configs_checked"] >= 1 and configs["runs"] >= len(gpu_checks.INPUTS) * len(backends)
    big = gpu_checks.check_big(device, backends, n=37, c=3000, rows=[0, 36])
    assert big["ok"], big
    det = gpu_checks.check_determinism(device, backends, shapes=[(64, 80, "bf16", "uint8"), (8, 9605, "fp32", "float")])
    assert det["ok"], det
    report = gpu_checks.render([configs, big, det], device)
    assert report.count("| pass |") == 3
    assert gpu_checks.sanitize_run(device, backend=backends[-1]) == 18


def test_gpu_checks_targets_command(capsys):
    committed = HERE / "results" / "2026-11-27-h200" / "run2-targets" / "results.json"
    assert gpu_checks.main(["targets", str(committed)]) == 0
    assert "| 1048576 | 80 | triton | 0.077 ✗ |" in capsys.readouterr().out


def test_gpu_checks_flags_a_wrong_backend(monkeypatch):
    """The comparison must catch a backend that is off: scale the loss of "reference" used as the
    backend under test."""
    original = gpu_checks.compare_one

    def off_by_a_bit(backend, cfg, inputs, stats, device, check_nograd):
        err, problems = original(backend, cfg, inputs, stats, device, check_nograd)
        return err + 0.1, problems

    monkeypatch.setattr(gpu_checks, "compare_one", off_by_a_bit)
    result = gpu_checks.check_configs(torch.device("cpu"), ["reference"], budget_s=1e-9, log=lambda *_: None)
    assert not result["ok"] and result["n_failures"] >= 1


# ------------------------------------------------------------------------------------------------
# README / docs generator
# ------------------------------------------------------------------------------------------------
def test_readme_tables(smoke_run, tmp_path):
    _, out, records, meta = smoke_run
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nbefore\n\n<!-- perf:start -->\nold\n<!-- perf:end -->\n\nafter\n")
    doc = tmp_path / "docs" / "performance.md"
    args = ["--results", str(out.parent), "--readme", str(readme), "--doc", str(doc)]
    assert readme_tables.main(args) == 0
    text = readme.read_text()
    assert "old" not in text and text.startswith("# x\n\nbefore") and text.endswith("after\n")
    assert "## Performance" in text and "throughput.png" in text and meta["device_name"] in text
    assert "| 16 × 80 |" in text
    assert "## Method" in doc.read_text()
    assert readme_tables.main(args + ["--check"]) == 0
    readme.write_text(text.replace("16 × 80", "16 x 80"))
    assert readme_tables.main(args + ["--check"]) == 1
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert readme_tables.main(["--results", str(out.parent), "--readme", str(plain), "--doc", str(doc)]) == 0
    assert plain.read_text() == "no markers\n"


# The report path must load neither torch nor the package: an import hook that refuses them.
NO_TORCH = """
import sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "dbl_kernels"):
            raise ImportError(name + " imported while rendering")

sys.meta_path.insert(0, Refuse())
sys.path.insert(0, sys.argv[1])
import readme_tables, run
assert readme_tables.main(["--check"]) == 0, "README.md / docs/performance.md out of date"
assert readme_tables.main(["--readme", sys.argv[2], "--doc", sys.argv[3]]) == 0
assert run.main(["--report", sys.argv[4], "--short"]) == 0
print("loaded:", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "dbl_kernels")))
"""


def test_report_needs_neither_torch_nor_the_package(tmp_path):
    """readme_tables.py and run.py --report render the committed results (old format included)
    with torch and dbl_kernels unimportable."""
    committed = HERE / "results" / "2026-11-27-h200" / "run2-targets"
    copy = tmp_path / "run"
    copy.mkdir()
    (copy / "results.json").write_text((committed / "results.json").read_text())
    readme = tmp_path / "README.md"
    readme.write_text("<!-- perf:start -->\n<!-- perf:end -->\n")
    out = subprocess.run([sys.executable, "-c", NO_TORCH, str(HERE), str(readme), str(tmp_path / "perf.md"),
                          str(copy)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "loaded: []" in out.stdout
    assert "| 1,048,576 × 80 |" in readme.read_text() and (copy / "throughput.png").stat().st_size > 0
    assert "1048576 bf16/uint8   fwd+bwd  triton" in out.stdout  # the short table of the old-format results


@pytest.mark.parametrize("path", sorted((HERE / "results").glob("**/results.json")), ids=lambda p: p.parent.name)
def test_committed_results_render(path):
    records, meta = report.load_results(path)
    summary = report.render_summary(records, meta)
    assert records and meta["device_name"] in summary and "| suite | N | C |" in summary
    assert report.losses_in(records) == ["db-focal"] and "## db-focal" not in summary  # from before the loss axis
    if not report.has_field(records, "host_us"):  # measured before the time split: rendered as then
        assert report.TIMES_OLD in summary and "host µs" not in summary and "## Time split" not in summary
