"""Installing: setup.py without torch at build time, the documented install command, and the
stamp that lets scripts/env.sh skip the one-minute rebuild when nothing changed."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIX = 'pip install --no-build-isolation -e ".[demo]"'

# setup.py as pip's isolated build runs it: torch is not importable
_SETUP_WITHOUT_TORCH = """
import runpy, sys
sys.modules["torch"] = None
sys.argv = ["setup.py", "--name"]
runpy.run_path("setup.py", run_name="__main__")
"""


def _setup_without_torch(**env):
    env = {k: v for k, v in os.environ.items() if k != "DBL_NO_EXTENSION"} | env
    return subprocess.run([sys.executable, "-c", _SETUP_WITHOUT_TORCH], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_setup_without_torch_fails_naming_the_fix():
    proc = _setup_without_torch()
    assert proc.returncode != 0
    message = proc.stderr
    assert "torch is not importable" in message and "build isolation" in message
    assert "pip install torch setuptools wheel\n" in message and FIX in message
    assert 'DBL_NO_EXTENSION=1 pip install -e ".[demo]"' in message


def test_setup_without_torch_installs_pure_python_when_asked():
    proc = _setup_without_torch(DBL_NO_EXTENSION="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "dbl_kernels"


@pytest.mark.parametrize("doc", ["README.md", "docs/demo.md"])
def test_docs_show_the_install_command_that_builds_the_kernel(doc):
    # docs/demo.md is the source of the README's demo section; both must show the working command
    lines = [line for line in (ROOT / doc).read_text().splitlines() if "pip install" in line and "-e" in line]
    assert lines and all("--no-build-isolation" in line for line in lines), lines
    assert FIX in (ROOT / doc).read_text()


# -- the .venv stamp ---------------------------------------------------------------------------------
def _load_stamp_module():
    spec = importlib.util.spec_from_file_location("venv_stamp", ROOT / "scripts" / "venv_stamp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A stand-in source tree: setup.py, csrc/, a built extension and a .venv, torch 2.13.0."""
    stamp = _load_stamp_module()
    monkeypatch.setattr(stamp, "_version", lambda dist: "2.13.0" if dist == "torch" else "0.1.0")
    (tmp_path / "csrc").mkdir()
    (tmp_path / "csrc" / "dbl_cpu.cpp").write_text("int x;\n")
    (tmp_path / "setup.py").write_text("setup()\n")
    (tmp_path / "dbl_kernels").mkdir()
    (tmp_path / "dbl_kernels" / "_C.abi3.so").write_bytes(b"\x7fELF")
    (tmp_path / ".venv").mkdir()
    return stamp, tmp_path


def test_stamp_is_current_until_the_build_inputs_change(project, monkeypatch):
    stamp, root = project
    env = {}
    assert not stamp.is_current("demo", root, env)  # never installed
    stamp.write("demo", root, env)
    assert stamp.is_current("demo", root, env)
    assert stamp.is_current(" demo, ", root, env)
    assert not stamp.is_current("test,triton", root, env)  # extras never installed

    (root / "csrc" / "dbl_cpu.cpp").write_text("int y;\n")
    assert not stamp.is_current("demo", root, env)
    stamp.write("demo", root, env)
    (root / "csrc" / "new.h").write_text("")
    assert not stamp.is_current("demo", root, env)
    stamp.write("demo", root, env)
    (root / "setup.py").write_text("setup(name='x')\n")
    assert not stamp.is_current("demo", root, env)
    stamp.write("demo", root, env)

    assert not stamp.is_current("demo", root, {"USE_CUDA": "0"})
    monkeypatch.setattr(stamp, "_version", lambda dist: "2.14.0" if dist == "torch" else "0.1.0")
    assert not stamp.is_current("demo", root, env)


def test_stamp_keeps_extras_and_checks_the_built_extension(project):
    stamp, root = project
    env = {}
    stamp.write("demo", root, env)
    stamp.write("test,triton", root, env)
    assert stamp.is_current("demo", root, env) and stamp.is_current("triton,test", root, env)
    (root / "dbl_kernels" / "_C.abi3.so").unlink()  # e.g. git clean -fX
    assert not stamp.is_current("demo", root, env)
    no_ext = {"DBL_NO_EXTENSION": "1"}
    stamp.write("demo", root, no_ext)
    assert stamp.is_current("demo", root, no_ext)
    (root / ".venv" / "dbl_install_stamp.json").write_text("{not json")
    assert not stamp.is_current("demo", root, no_ext)


def test_stamp_command_line(project):
    stamp, _ = project
    with pytest.raises(SystemExit, match="usage"):
        stamp.main(["venv_stamp.py", "check"])
