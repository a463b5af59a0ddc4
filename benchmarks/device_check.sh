#!/usr/bin/env bash
# One call on a GPU machine: build the extension, measure performance first (the targets and a
# training shape, while the budget is fresh), then run the test suite on CUDA, the GPU checks
# (configs, N*C > 2^31, determinism, compute-sanitizer) and the wider benchmark; outputs in $OUT.
#
#   OUT=/some/dir bash benchmarks/device_check.sh        (from anywhere; runs in the repo root)
#
# OUT defaults to ./dbl_bench/<date>-device-check under the directory it is called from (ignored by
# git); results are committed by copying them into benchmarks/results/ explicitly.
#
# No network is needed (pip runs with --no-index). The device gives a session 15 minutes in all;
# this script must leave room to rerun a step. Each step is capped with `timeout` so a hang in one
# still leaves the others' output. Caps: build 180 s | perf 110 s | ncu 2 x 45 s | overhead 40 s |
# tests 105 s, with compute-sanitizer (80 + 40 s) beside | checks 65 s | v2 40 s | compile 80 s |
# bench 30 s (DBL_CHECK_BENCH=0 leaves it out). 15 minutes of device time hold the whole check only
# as two calls of one warm machine (the second right after the first, before it is given back):
#   DBL_CHECK_STEPS=build,perf,ncu,overhead DBL_CHECK_BENCH=0 ...      (under 7.5 minutes)
#   DBL_CHECK_STEPS=tests,sanitizer,racecheck,checks,v2,compile DBL_CHECK_BUILD=0 ...   (under 5.5)
# perf: N*C >= 2^26 (1,048,576 x 80; 8,192 x 9,605; 512 x 131,072) and 256 x 80, bf16 logits,
# uint8 labels, forward + backward, for triton, cuda, compile, eager, bce: user-visible, host and
# CUDA-graph device time per row, and the Triton autotuner's choice per case (docs/performance.md).
# $OUT receives: device_check.md (the step table and the tables), perf/ and bench/ (each
# results.json, results.csv, summary.md, throughput.png), gpu_checks.json, logs.tar.gz (every log).
#
# For a dry run of this script's plumbing on a CPU machine (nothing here needs changing on a GPU):
#   DBL_CHECK_DEVICE=cpu DBL_CHECK_BUILD=0 DBL_CHECK_SUITES=smoke DBL_CHECK_BIG=70x3000 \
#   DBL_CHECK_TESTS="benchmarks/test_bench.py" DBL_CHECK_K=suites OUT=/tmp/x bash benchmarks/device_check.sh
set -uo pipefail
OUT="${OUT:-$PWD/dbl_bench/$(date +%Y-%m-%d)-device-check}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d /tmp/dbl_check.XXXXXX)"
LOGS="$WORK/logs"
mkdir -p "$LOGS"
T0=$(date +%s)

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 MAX_JOBS=16
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export TORCHINDUCTOR_CACHE_DIR="$WORK/inductor" TRITON_CACHE_DIR="$WORK/triton"
PY="${PYTHON:-$(command -v python || command -v python3)}"
DEVICE="${DBL_CHECK_DEVICE:-cuda}"
SUITES="${DBL_CHECK_SUITES:-coco,openimages}"
# The performance pass: on a CPU dry run the tiny smoke suite (the plumbing, not the numbers).
if [ "$DEVICE" = cuda ]; then PERF_DEFAULT=perf; PERF_BACKENDS=triton,cuda,compile,eager,bce
else PERF_DEFAULT=smoke; PERF_BACKENDS=cpu,compile,eager,bce; fi
PERF_SUITE="${DBL_CHECK_PERF_SUITE:-$PERF_DEFAULT}"
BIG="${DBL_CHECK_BIG:-65537x32768}"
# Default: the files that exercise the GPU (the rest is CPU-only and covered by CI), with the Triton
# file narrowed by DBL_CHECK_K below: its full set compiles ~280 variants (minutes on a GPU).
read -r -a TESTS <<< "${DBL_CHECK_TESTS:-tests/test_cpp_backend.py tests/test_triton_backend.py tests/test_api.py benchmarks/test_bench.py}"
# The golden values ship in tests/golden; every backend must be there (a broken CUDA build fails
# its tests instead of skipping them).
export DBL_REQUIRE="${DBL_REQUIRE:-cpu,cuda,triton}"

: > "$WORK/steps.tsv"
# step NAME LIMIT_S CMD...: run CMD under `timeout`, log to $LOGS/NAME.log, record rc and seconds.
# DBL_CHECK_STEPS (a comma list of step names; ncu_* and the sanitizers by their first word)
# runs those steps only: the check then fits two calls of a warm machine (see the header).
step() {
  local name="$1" limit="$2"; shift 2
  local t=$(date +%s) rc
  if [ -n "${DBL_CHECK_STEPS:-}" ] && [[ ",$DBL_CHECK_STEPS," != *",${name%%_*},"* ]]; then
    printf '%s\tskipped\t0\t%s\n' "$name" "$limit" >> "$WORK/steps.tsv"
    return 0
  fi
  timeout -k 3 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t ))" "$limit" >> "$WORK/steps.tsv"
  return $rc
}

# --- environment (read-only queries) ---------------------------------------------------------
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu,utilization.gpu --format=csv 2>&1
  nvcc --version 2>&1 | tail -2
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'capability', torch.cuda.get_device_capability(0))" 2>&1
  "$PY" -c "import triton; print('triton', triton.__version__)" 2>&1
  nproc; free -g | head -2
  git -C "$ROOT" rev-parse HEAD 2>&1; git -C "$ROOT" status --short 2>&1 | head -40
} > "$LOGS/env.txt" 2>&1
ARCH="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))' 2>/dev/null || echo 9.0)"
export TORCH_CUDA_ARCH_LIST="$ARCH"

# --- 1. build (180 s; TORCH_CUDA_ARCH_LIST: this GPU only; DBL_NO_EMULATE: without the CPU emulation
# of the CUDA kernel, a test aid whose object alone took 137 s on an H100 host) ------------------
# The extension built in place (the package is imported from the repo root through PYTHONPATH);
# pip's editable install is only the fallback: on the GPU image it tried to fetch build deps.
if [ "${DBL_CHECK_BUILD:-1}" = 1 ]; then
step build 180 bash -c "export DBL_NO_EMULATE=1; '$PY' setup.py build_ext --inplace -j 16 \
  || '$PY' -m pip install --no-build-isolation --no-deps --no-index -v -e ."
else
  printf 'build\tskipped\t0\t0\n' >> "$WORK/steps.tsv"
fi
"$PY" -c "import dbl_kernels; print('available backends:', dbl_kernels.available_backends())" \
  > "$LOGS/backends.txt" 2>&1

# --- 2. performance first (110 s; 67 s seen on an H100): the targets and 256 x 80 while nothing else has run ------------
# run.py stops starting new cases after --budget-s and writes what it has on SIGTERM too.
step perf 110 "$PY" benchmarks/run.py --device "$DEVICE" --suite "$PERF_SUITE" --logits-dtypes bf16 \
  --labels-dtypes uint8 --modes fwd+bwd --backends "$PERF_BACKENDS" --out "$OUT/perf" \
  --budget-s 90 --min-time 0.05 --no-progress --short

# --- 2b. the hardware profiler over one training step of each fused kernel (2 x 45 s) -----------
# 1,048,576 x 80 (a target shape): DRAM bytes, SASS instructions and MUFU per element, issue-slot
# use, occupancy and warp stalls, to set against static_check's model. Without its extra metrics
# when this ncu does not know one of them (the sections alone still say most of it).
NCU="$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)"
if [ -n "$NCU" ] && [ "$DEVICE" = cuda ] && [ "${DBL_CHECK_NCU:-1}" = 1 ]; then
  NCU_ARGS="$("$PY" benchmarks/ncu_probe.py --ncu-args)"
  for b in triton cuda; do
    step "ncu_$b" 45 bash -c "'$NCU' --clock-control none --profile-from-start off -k regex:fused_kernel -c 2 \
        --csv --page raw --log-file '$LOGS/ncu_$b.csv' $NCU_ARGS '$PY' benchmarks/ncu_probe.py --backend $b \
      || '$NCU' --clock-control none --profile-from-start off -k regex:fused_kernel -c 2 --csv --page raw \
        --log-file '$LOGS/ncu_$b.csv' --section ${NCU_ARGS#*--section } '$PY' benchmarks/ncu_probe.py --backend $b"
    "$PY" benchmarks/ncu_probe.py --summarize "$LOGS/ncu_$b.csv" >> "$LOGS/ncu_summary.txt" 2>&1
  done
else
  echo "ncu not found or not asked for" > "$LOGS/ncu_summary.txt"
  printf 'ncu\tmissing\t0\t0\n' >> "$WORK/steps.tsv"
fi

# --- 3. tests on CUDA (105 s), compute-sanitizer beside them (memcheck 80 s, racecheck 40 s) ------------------------------
SAN="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer 2>/dev/null | head -1)"
if [ -n "$SAN" ] && [ "$DEVICE" = cuda ]; then
  # The caching allocator would hide out-of-bounds accesses inside its cached blocks.
  ( export PYTORCH_NO_CUDA_MEMORY_CACHING=1
    step sanitizer 80 "$SAN" --tool memcheck --error-exitcode 3 --leak-check no \
      "$PY" benchmarks/gpu_checks.py sanitize
    step racecheck 40 "$SAN" --tool racecheck --error-exitcode 3 "$PY" benchmarks/gpu_checks.py sanitize --small
    cat "$LOGS/racecheck.log" >> "$LOGS/sanitizer.log" ) &
  SAN_PID=$!
else
  echo "compute-sanitizer not found" > "$LOGS/sanitizer.log"
  printf 'sanitizer\tmissing\t0\t0\n' >> "$WORK/steps.tsv"
  SAN_PID=
fi
# DBL_CHECK_K: a pytest -k expression (the full Triton file compiles ~280 variants: minutes on a GPU).
K="${DBL_CHECK_K-(cuda and not nvcc and not sass and not compiles_against) or test_api or test_bench or (test_triton_backend and (golden or class_counts or column or autotuned or compile or opcheck or grad_output or deterministic or saturated or label_dtypes or half_logits or scale_grad or mutation or no_gradient or empty or noncontiguous))}"
step tests "${DBL_CHECK_TESTS_S:-105}" "$PY" -m pytest -v -p no:cacheprovider "${TESTS[@]}" ${K:+-k "$K"} \
  --benchmark-disable -rfE --durations=15 --junitxml="$LOGS/junit.xml"
[ -n "$SAN_PID" ] && wait "$SAN_PID"

# --- 4. GPU checks: configs vs reference, N*C > 2^31, determinism (65 s; 71 s seen with one fused
# backend and a 35 s grid budget) ---------------------------------------------------------------
step checks "${DBL_CHECK_CHECKS_S:-65}" "$PY" benchmarks/gpu_checks.py configs,big,determinism --device "$DEVICE" \
  --budget-s "${DBL_CHECK_CONFIG_BUDGET_S:-20}" --big-shape "$BIG" \
  --json "$OUT/gpu_checks.json" --md "$WORK/checks.md"
# ASL, DB-ASL, per_class and CSR labels against the reference (40 s); torch.compile(fullgraph=True)
# and mode="reduce-overhead" (CUDA graphs) of a training step (80 s)
step v2 40 "$PY" benchmarks/gpu_checks.py v2 --device "$DEVICE" --json "$WORK/v2.json" --md "$WORK/v2.md"
step compile 80 "$PY" benchmarks/gpu_checks.py compile --device "$DEVICE" \
  --json "$WORK/compile.json" --md "$WORK/compile.md"

# --- 4b. host overhead per call at a small (host-bound) shape, each fused backend of the device
# with the profiler's top ops (40 s; the first call of each compiles and autotunes) -----------------
step overhead 40 bash -c "for b in \$('$PY' -c 'import dbl_kernels as d, torch; print(\" \".join(x for x in d.available_backends() if x != \"reference\" and (x != \"cpu\" or \"$DEVICE\" == \"cpu\")))'); do '$PY' benchmarks/overhead.py --device '$DEVICE' --backend \$b --n 256 --c 80 --reps 50 --python-profile 200 | head -75; done"

# --- 5. wider benchmark: coco, openimages, as far as 30 s go (what is left is recorded as skipped) -
# To fit the budget torch.compile gets one graph per C and dtypes (batch dimension dynamic).
[ "${DBL_CHECK_BENCH:-1}" = 1 ] && step bench 30 "$PY" benchmarks/run.py --device "$DEVICE" --suite "$SUITES" --out "$OUT/bench" \
  --budget-s 18 --min-time 0.05 --static-from 67108864 --no-progress --short

# --- report -------------------------------------------------------------------------------------
{
  echo "# device_check $(date -u +%Y-%m-%d) on $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")' 2>/dev/null)"
  echo
  echo "total $(( $(date +%s) - T0 )) s; $(cat "$LOGS/backends.txt" 2>/dev/null | tail -1)"
  echo
  echo "| step | rc | seconds | limit |"
  echo "|---|---|---|---|"
  awk -F'\t' '{printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4}' "$WORK/steps.tsv"
  echo
  echo "tests: $(grep -E '^(FAILED|ERROR)|[0-9]+ (passed|failed)' "$LOGS/tests.log" | tail -1)"
  grep -E '^(FAILED|ERROR) ' "$LOGS/tests.log" | head -15
  echo
  echo "sanitizer: $(grep -E 'SUMMARY|sanitize:' "$LOGS/sanitizer.log" 2>/dev/null | tr '\n' ' ')"
  echo
  cat "$WORK/checks.md" 2>/dev/null || echo "gpu checks: no report (see logs/checks.log)"
  tail -n +5 "$WORK/v2.md" 2>/dev/null || echo "v2 check: no report (see logs/v2.log)"
  tail -n +5 "$WORK/compile.md" 2>/dev/null || echo "compile check: no report (see logs/compile.log)"
  echo
  echo "## Hardware profile of the main kernel (ncu, 1,048,576 x 80 bf16/uint8, fwd + bwd)"
  echo '```'
  cat "$LOGS/ncu_summary.txt" 2>/dev/null | head -60
  echo '```'
  echo
  echo "## Host overhead (ms per call, 256 x 80)"
  echo '```'
  grep -vE '^(USDT|-)' "$LOGS/overhead.log" 2>/dev/null | head -30
  echo '```'
  echo
  echo "## Performance first (perf/summary.md)"
  echo
  sed -e '1,/^$/d' "$OUT/perf/summary.md" 2>/dev/null || echo "no perf results (see logs/perf.log)"
  echo
  echo "## Benchmark (fastest fused backend per case)"
  echo '```'
  "$PY" benchmarks/run.py --report "$OUT/bench" --short --no-plot 2>&1 | tail -60
  echo '```'
} > "$OUT/device_check.md" 2>&1
tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs 2>/dev/null
cat "$OUT/device_check.md"
