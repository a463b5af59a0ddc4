# Sourced by demo.sh / test.sh with the extras to install ($1): a virtual environment in .venv with
# torch, the package and its C++ extension. Each step it takes prints one line on stderr; the
# install (a one-minute rebuild) is skipped when scripts/venv_stamp.py finds nothing changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
say() { echo "[dbl] $*" >&2; }
# find_spec, not import: importing torch alone takes seconds
has_module() { python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)"; }

if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip setuptools wheel >/dev/null
fi
# shellcheck disable=SC1091
. .venv/bin/activate
# torch first: the extension builds against it (--no-build-isolation). Any torch >= 2.4 works;
# this pin is the CPU wheel the project is developed and tested with.
if ! has_module torch; then
  say "installing torch ${DBL_TORCH_VERSION:-2.13.0}"
  python -m pip install -q "torch==${DBL_TORCH_VERSION:-2.13.0}"
fi
if ! has_module numpy; then
  say "installing numpy"
  python -m pip install -q numpy
fi
if python scripts/venv_stamp.py check "$1"; then
  say "up to date (.venv)"
else
  if [ "${DBL_NO_EXTENSION:-0}" = 1 ]; then
    say "installing the package [$1], pure Python (DBL_NO_EXTENSION=1)"
  else
    say "installing the package [$1] and building its C++ extension (about a minute)"
  fi
  python -m pip install -q --no-build-isolation -e ".[$1]"
  python scripts/venv_stamp.py write "$1"
fi
