#!/usr/bin/env bash
# Set up .venv (torch, triton, the package with its C++ extension) and run the whole test suite,
# or only the test files / nodes named among the arguments (bash scripts/test.sh tests/test_stats.py).
# Triton kernels run on CPU tensors through the interpreter (TRITON_INTERPRET=1) on machines without a GPU.
. "$(dirname "$0")/env.sh" "test,triton"
if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  export TRITON_INTERPRET="${TRITON_INTERPRET:-0}"
else
  export TRITON_INTERPRET="${TRITON_INTERPRET:-1}"
fi
export TRITON_DEFAULT_FP_FUSION="${TRITON_DEFAULT_FP_FUSION:-1}"  # triton 3.9's default (fused multiply-add), stated
targets=(tests benchmarks)
for arg in "$@"; do
  case "$arg" in
    -*) ;;
    *) if [ -e "${arg%%::*}" ]; then targets=(); fi ;;
  esac
done
python -m pytest -q -p no:cacheprovider ${targets[@]+"${targets[@]}"} --benchmark-disable "$@"
