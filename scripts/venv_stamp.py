"""Whether the package's install in .venv is current, so scripts/env.sh can skip `pip install -e`.

    python scripts/venv_stamp.py check EXTRAS   exit 0 when nothing changed since the last write
    python scripts/venv_stamp.py write EXTRAS   after a successful install

The install rebuilds the C++ extension (about a minute) every time, so it runs only when what the
build reads changed: setup.py, csrc/*, the torch version, the build switches in the environment,
or when extras are asked for that were never installed. Runs with the venv's Python; imports
neither torch nor the package, so a check costs a Python start-up.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMP = Path(".venv") / "dbl_install_stamp.json"
# setup.py reads these: a different value builds a different extension (or none)
BUILD_ENV = ("DBL_NO_EXTENSION", "USE_CUDA", "CUDA_HOME", "TORCH_CUDA_ARCH_LIST")


def _version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def build_key(root=ROOT, env=None):
    """A hash of everything the extension build depends on."""
    env = os.environ if env is None else env
    h = hashlib.sha256()
    for path in [root / "setup.py", *sorted((root / "csrc").glob("*"))]:
        h.update(f"{path.relative_to(root).as_posix()} {hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    h.update(f"torch {_version('torch')}\n".encode())
    for name in BUILD_ENV:
        h.update(f"{name}={env.get(name, '')}\n".encode())
    return h.hexdigest()


def parse_extras(extras):
    return sorted({e.strip() for e in extras.split(",") if e.strip()})


def _read(stamp):
    try:
        return json.loads(stamp.read_text())
    except (OSError, ValueError):
        return {}


def _extension_present(root, env):
    if env.get("DBL_NO_EXTENSION", "0") == "1":
        return True
    return any((root / "dbl_kernels").glob("_C.*"))  # _C.abi3.so, _C.pyd: built in place by the editable install


def is_current(extras, root=ROOT, env=None):
    """True when the stamp matches the sources and torch, and every requested extra was installed."""
    env = os.environ if env is None else env
    old = _read(root / STAMP)
    return (old.get("build") == build_key(root, env) and set(parse_extras(extras)) <= set(old.get("extras", []))
            and _version("dbl_kernels") is not None and _extension_present(root, env))


def write(extras, root=ROOT, env=None):
    """Record a successful install; extras stay installed across rebuilds, so they accumulate."""
    env = os.environ if env is None else env
    stamp = root / STAMP
    extras = sorted(set(parse_extras(extras)) | set(_read(stamp).get("extras", [])))
    stamp.write_text(json.dumps({"build": build_key(root, env), "extras": extras}) + "\n")


def main(argv):
    if len(argv) != 3 or argv[1] not in ("check", "write"):
        sys.exit("usage: python scripts/venv_stamp.py check|write EXTRAS (e.g. test,triton)")
    if argv[1] == "check":
        return 0 if is_current(argv[2]) else 1
    write(argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
