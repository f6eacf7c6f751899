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
# with qemu-aarch64 and an aarch64 libc installed (Debian: `apt-get install qemu-user
# libc6-arm64-cross`), they are run emulated through the runtime loop too (infra/arm64_smoke.py:
# status, ingest, worker answer their fixtures, the predictions decrypt); emulation says nothing
# of Graviton's speed.
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
  # The CLI is the client's, native: built in the usual target dir (not an arm64 one).
  CLI_TARGET="${CLI_TARGET_DIR:-$HOME/.cache/fhe-batch/target}"
  CARGO_TARGET_DIR="$CLI_TARGET" cargo build --release -p fhe-batch-cli --locked
  export FHE_BATCH_CLI="$CLI_TARGET/release/fhe-batch"
  for arch in ${ARCHS:-x86_64 arm64}; do
    if [ "$arch" = x86_64 ]; then
      "$FHE_BATCH_VENV/bin/python" infra/runtime_loop_test.py \
        --ingest .aws-sam/build/IngestFunction/bootstrap \
        --worker .aws-sam/build/WorkerFunction/bootstrap \
        --status .aws-sam/build/StatusFunction/bootstrap \
        --deadletter .aws-sam/build/DeadLetterFunction/bootstrap
    elif command -v qemu-aarch64 >/dev/null && [ -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ]; then
      wrappers=$(mktemp -d)
      for f in Ingest Worker Status DeadLetter; do
        w="$wrappers/$(echo "$f" | tr 'A-Z' 'a-z')"
        printf '#!/bin/sh\nexec qemu-aarch64 -L /usr/aarch64-linux-gnu %s "$@"\n' \
          "$PWD/.aws-sam/build-arm64/${f}Function/bootstrap" > "$w"
        chmod +x "$w"
      done
      "$FHE_BATCH_VENV/bin/python" infra/arm64_smoke.py "$wrappers" "$FHE_BATCH_CLI"
    else
      echo "arm64: built; not run (install qemu-user and libc6-arm64-cross to run it emulated)"
    fi
  done
fi
