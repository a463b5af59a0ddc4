#!/usr/bin/env bash
# Set up .venv and run the main job: the long-tailed multi-label training demo.
. "$(dirname "$0")/env.sh" "demo"
python -m dbl_kernels.demo "$@"
