#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this):
#   1. tools: a venv with moto, cfn-lint and aws-sam-translator (infra/requirements-ci.txt);
#   2. the SAM template: cfn-lint on it and on its offline SAM expansion, plus our own checks;
#   3. formatting and lints;
#   4. every test of the workspace (release profile: FHE is unusably slow unoptimised, and one
#      optimised build serves tests, demo and bench), with a moto server on 127.0.0.1 as the
#      S3/SQS endpoint for the AWS adapter tests;
#   5. the three function binaries through the real Lambda runtime loop (cargo lambda watch
#      --only-lambda-apis + cargo lambda invoke with tests/fixtures/events);
#   6. a short crash run: real `fhe-batch worker` processes on moto, SIGKILLed at random times,
#      every result compared with a fault-free run (infra/chaos.py kill; 200 kills by hand);
#   7. a fuzz smoke run of every target (infra/fuzz.sh; 10 million runs each by hand).
# Every service is stopped by its PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fhe-batch/target}"
VENV="${FHE_BATCH_VENV:-$HOME/.cache/fhe-batch/venv}"
export FHE_BATCH_VENV="$VENV"
PORT="${MOTO_PORT:-5055}"

echo "== tools"
infra/local-stack.sh install

echo "== template"
mkdir -p "$CARGO_TARGET_DIR"
"$VENV/bin/cfn-lint" template.yaml infra/tenant-role.yaml
"$VENV/bin/python" infra/sam_to_cfn.py template.yaml > "$CARGO_TARGET_DIR/template.cfn.json"
"$VENV/bin/cfn-lint" "$CARGO_TARGET_DIR/template.cfn.json"
"$VENV/bin/python" infra/check_template.py template.yaml

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets --locked -- -D warnings

echo "== tests"
infra/local-stack.sh start "$PORT"
trap 'infra/local-stack.sh stop "$PORT"' EXIT
eval "$(infra/local-stack.sh env "$PORT")"
cargo test --release --workspace --locked

echo "== Lambda runtime loop"
# --all-targets keeps the feature set of the test build (dev-dependencies included), so the
# function binaries come from the same compiled crates instead of a second build.
cargo build --release --workspace --all-targets --locked
PATH="$VENV/bin:$PATH" "$VENV/bin/python" infra/runtime_loop_test.py "$CARGO_TARGET_DIR/release"

echo "== crash smoke: worker processes killed at random (infra/chaos.py kill)"
FHE_BATCH_CLI="$CARGO_TARGET_DIR/release/fhe-batch" \
  "$VENV/bin/python" infra/chaos.py kill --kills 10 --port "$((PORT + 1))"

echo "== fuzz smoke (infra/fuzz.sh)"
infra/fuzz.sh 50000
