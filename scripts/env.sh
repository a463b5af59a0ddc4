# Sourced by demo.sh / test.sh: a virtual environment in .venv with torch, the package and its extension.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip setuptools wheel >/dev/null
# torch first: the extension builds against it (--no-build-isolation). Any torch >= 2.4 works;
# this pin is the CPU wheel the project is developed and tested with.
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==${DBL_TORCH_VERSION:-2.13.0}"
python -c "import numpy" 2>/dev/null || python -m pip install -q numpy
python -m pip install -q --no-build-isolation -e ".[$1]"
