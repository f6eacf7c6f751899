#!/usr/bin/env bash
# Fuzz every reader of untrusted bytes with libFuzzer (cargo-fuzz), and report executions,
# speed and crashes per target.
#
#   infra/fuzz.sh [RUNS] [TARGET...]     # default: 10,000,000 runs of every target
#   infra/fuzz.sh 20000                  # the smoke run .ci/run does
#
# Targets (fuzz/fuzz_targets): batch, chunk, result, model, key_file, s3_event, sqs_body, job_id,
# store_key, onnx, public_key. Each starts from fuzz/seeds/<target> and tests/fixtures/hostile/<target>; new inputs
# go to fuzz/corpus/<target> (not committed) and crashes to fuzz/artifacts/<target>.
# cargo-fuzz is installed into $FHE_BATCH_TOOLS (default ~/.cache/fhe-batch/tools); the build
# goes to $FHE_BATCH_FUZZ_TARGET (default ~/.cache/fhe-batch/fuzz-target). libFuzzer's
# instrumentation flags need RUSTC_BOOTSTRAP on a stable toolchain; nothing else uses it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
RUNS="${1:-10000000}"
shift || true
TOOLS="${FHE_BATCH_TOOLS:-$HOME/.cache/fhe-batch/tools}"
export CARGO_TARGET_DIR="${FHE_BATCH_FUZZ_TARGET:-$HOME/.cache/fhe-batch/fuzz-target}"
export PATH="$TOOLS/bin:$PATH"
export RUSTC_BOOTSTRAP=1
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(batch chunk result model key_file s3_event sqs_body job_id store_key onnx public_key)
fi

if ! cargo fuzz --version 2>/dev/null | grep -q "0.13.2"; then
  cargo install cargo-fuzz --version 0.13.2 --locked --root "$TOOLS" --quiet
fi
cd "$root/fuzz"
cargo fuzz build -s none 2>&1 | grep -vE "^ *(Compiling|Finished|Running)" || true
status=0
printf '%-10s %12s %8s %10s %8s %s\n' target runs seconds execs/s corpus crashes
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  seeds=()
  for d in "seeds/$t" "$root/tests/fixtures/hostile/$t"; do
    [ -d "$d" ] && seeds+=("$d")
  done
  log="artifacts/$t/last-run.log"
  set +e
  cargo fuzz run -s none "$t" "corpus/$t" "${seeds[@]}" -- \
    -runs="$RUNS" -max_len=8192 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" >"$log" 2>&1
  rc=$?
  set -e
  done_line="$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1 || true)"
  runs="$(echo "$done_line" | awk '{print $2}')"
  secs="$(echo "$done_line" | awk '{print $5}')"
  speed="$(grep -E 'stat::average_exec_per_sec' "$log" | awk '{print $2}' | tail -1)"
  corpus="$(find "corpus/$t" -type f | wc -l)"
  crashes="$(find "artifacts/$t" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' \) | wc -l)"
  printf '%-10s %12s %8s %10s %8s %s\n' "$t" "${runs:-?}" "${secs:-?}" "${speed:-?}" "$corpus" "$crashes"
  if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ] || [ -z "$done_line" ]; then
    echo "  $t FAILED (exit $rc); see fuzz/$log" >&2
    tail -30 "$log" >&2
    status=1
  fi
done
exit $status
