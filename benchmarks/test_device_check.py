"""The GPU run's own tools, on the CPU: the v2 and torch.compile checks of gpu_checks.py, the
reading of an ncu report (ncu_probe.py) and device_check.sh's step selection."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gpu_checks  # noqa: E402
import ncu_probe  # noqa: E402

from dbl_kernels import available_backends  # noqa: E402

CPU = torch.device("cpu")
needs_cpu_op = pytest.mark.skipif("cpu" not in available_backends(), reason="needs the C++ extension")


@needs_cpu_op
def test_v2_and_compile_checks_pass_on_the_cpu_op():
    v2 = gpu_checks.check_v2(CPU, ["cpu"], shapes=((9, 80),))
    assert v2["ok"] and len(v2["runs"]) == len(gpu_checks.V2_CASES)
    assert {r["case"] for r in v2["runs"]} == {"ASL", "DB-ASL", "per_class", "CSR", "CSR by_batch"}
    compiled = gpu_checks.check_compile(CPU, ["cpu"], n=16, steps=2)
    assert compiled["ok"] and [r["mode"] for r in compiled["runs"]] == ["fullgraph", "reduce-overhead"]
    text = gpu_checks.render([v2, compiled], CPU)
    assert "| v2 | pass |" in text and "| compile | pass |" in text and "cpu reduce-overhead" in text


@needs_cpu_op
def test_v2_check_fails_a_backend_that_is_off(monkeypatch):
    monkeypatch.setattr(gpu_checks, "rel", lambda a, b: 2e-5)
    result = gpu_checks.check_v2(CPU, ["cpu"], shapes=((5, 80),), log=lambda *_: None)
    assert not result["ok"] and "failed: cpu ASL 5x80: 2e-05" in gpu_checks.render([result], CPU)


def test_unknown_check_is_refused(capsys):
    with pytest.raises(SystemExit):
        gpu_checks.main(["configs,nonsense", "--device", "cpu"])
    assert "unknown check nonsense" in capsys.readouterr().err


def test_ncu_summary_per_element(tmp_path):
    """A `--csv --page raw` report (ncu's own messages, a header, a units row, one kernel) turned
    into per-element figures: SASS thread instructions, MUFU, DRAM bytes."""
    report = tmp_path / "ncu.csv"
    report.write_text(
        '==PROF== Connected to process 1\n'
        '"ID","Kernel Name","gpu__time_duration.sum","smsp__thread_inst_executed.sum","smsp__inst_executed.sum",'
        '"smsp__inst_executed_pipe_xu.sum","dram__bytes_read.sum","dram__bytes_write.sum",'
        '"launch__registers_per_thread","smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio"\n'
        '"","","nsecond","inst","inst","inst","Mbyte","Kbyte","register/thread","ratio"\n'
        '"0","_fused_kernel","1,000","3,500","100","20","3","800","113","5.45"\n')
    text = ncu_probe.summarize(report, elements=100)
    assert "kernel _fused_kernel" in text and "time 1000.0 nsecond" in text
    assert "SASS thread instr/elem 35.00" in text and "warp instr/elem x 32 32.00" in text
    assert "XU (MUFU) warp instr/elem x 32 6.40" in text
    assert "DRAM read B/elem 30000.00" in text and "DRAM write B/elem 8000.00" in text
    assert "launch__registers_per_thread 113" in text and "long_scoreboard_per_issue_active.ratio 5.45" in text
    empty = tmp_path / "empty.csv"
    empty.write_text("==ERROR== no kernels were profiled\n")
    assert "no kernel in the report" in ncu_probe.summarize(empty, elements=1)


def test_ncu_arguments_name_metrics_and_sections(capsys):
    assert ncu_probe.main(["--ncu-args"]) == 0
    args = capsys.readouterr().out.split()
    assert args[0] == "--metrics" and "smsp__thread_inst_executed.sum" in args[1]
    assert args.count("--section") == len(ncu_probe.SECTIONS)


@needs_cpu_op
def test_device_check_runs_the_chosen_steps(tmp_path):
    """The script's plumbing on the CPU: only the steps named in DBL_CHECK_STEPS run, the others are
    listed as skipped, and the report is written."""
    env = dict(os.environ, DBL_CHECK_DEVICE="cpu", DBL_CHECK_BUILD="0", DBL_CHECK_BENCH="0", DBL_REQUIRE="cpu",
               DBL_CHECK_STEPS="overhead", OUT=str(tmp_path / "out"), PYTHON=sys.executable)
    out = subprocess.run(["bash", str(HERE / "device_check.sh")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = (tmp_path / "out" / "device_check.md").read_text()
    assert "| overhead | 0 |" in report and "| perf | skipped |" in report and "| v2 | skipped |" in report
    assert "backend cpu on cpu, 256 x 80" in report and "bce forward + backward" in report


@needs_cpu_op
def test_overhead_script_profiles_the_python_side():
    out = subprocess.run([sys.executable, str(HERE / "overhead.py"), "--device", "cpu", "--backend", "cpu",
                          "--n", "8", "--reps", "3", "--python-profile", "5", "--python-rows", "5"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "forward + backward" in out.stdout and "bce forward + backward" in out.stdout
    assert "Python functions by own time over 5 forward + backward calls" in out.stdout
    assert "ncalls  tottime" in out.stdout
