#!/usr/bin/env bash
# Builds the deployable stack with `sam build` (no Docker: cargo-lambda + zig from PyPI), then
# smoke-tests the exact x86_64 bootstraps it produced through the Lambda runtime loop against a
# local moto stack. Run it before `sam deploy`. A cold build takes tens of minutes on 2 cores.
#
#   infra/sam-build.sh            # build both architectures + smoke test of x86_64
#   SKIP_SMOKE=1 infra/sam-build.sh
#   ARCHS=x86_64 infra/sam-build.sh
#
# arm64 bootstraps are built too (into .aws-sam/build-arm64, deploy them with
# `sam deploy --template .aws-sam/build-arm64/template.yaml --parameter-overrides Architecture=arm64`);
# they cannot run on this x86_64 machine, so only their build is checked here.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="${FHE_BATCH_DEPLOY_VENV:-$HOME/.cache/fhe-batch/deploy-venv}"
if [ ! -x "$TOOLS/bin/sam" ] || ! cmp -s infra/requirements-deploy.txt "$TOOLS/.requirements"; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install --quiet --disable-pip-version-check -r infra/requirements-deploy.txt
  cp infra/requirements-deploy.txt "$TOOLS/.requirements"
fi
export PATH="$TOOLS/bin:$PATH" SAM_CLI_TELEMETRY=0
for arch in ${ARCHS:-x86_64 arm64}; do
  if [ "$arch" = x86_64 ]; then
    sam build
    ls -l .aws-sam/build/*/bootstrap
  else
    sam build --parameter-overrides "Architecture=$arch" --build-dir ".aws-sam/build-$arch"
    ls -l ".aws-sam/build-$arch"/*/bootstrap
    file ".aws-sam/build-$arch"/*/bootstrap | grep -q aarch64 || { echo "not aarch64 binaries"; exit 1; }
  fi
done

if [ -z "${SKIP_SMOKE:-}" ]; then
  export FHE_BATCH_VENV="${FHE_BATCH_VENV:-$HOME/.cache/fhe-batch/venv}"
  infra/local-stack.sh install
  PORT="${MOTO_PORT:-5057}"
  infra/local-stack.sh start "$PORT"
  trap 'infra/local-stack.sh stop "$PORT"' EXIT
  eval "$(infra/local-stack.sh env "$PORT")"
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fhe-batch/target}"
  cargo build --release -p fhe-batch-cli --locked
  FHE_BATCH_CLI="$CARGO_TARGET_DIR/release/fhe-batch" \
    "$FHE_BATCH_VENV/bin/python" infra/runtime_loop_test.py \
    --ingest .aws-sam/build/IngestFunction/bootstrap \
    --worker .aws-sam/build/WorkerFunction/bootstrap \
    --status .aws-sam/build/StatusFunction/bootstrap \
    --deadletter .aws-sam/build/DeadLetterFunction/bootstrap
fi
