#!/usr/bin/env bash
# Side-by-side benchmark: concrete-ml 1.9 and fhe-batch on the same models (trees: same data
# split, same hyperparameters; networks: the same weights), one model after the other in one
# run on this machine, printing seconds and bootstraps per record and the ratio. Run on an idle
# machine.
#
#   infra/peer-bench.sh [--records N] [--models bc-tree-d4,bc-rf-20x4,bc-xgb-20x4]
#   infra/peer-bench.sh --mlp --records 3 --our-records 32 --models mnist-mlp-784-128-10
#   infra/peer-bench.sh --mlp-seeds 5 --shapes 128,128-64    (accuracy on 5 networks per shape)
#
# Installs concrete-ml into $PEER_VENV (default ~/.cache/fhe-batch/cml-venv) and builds the
# release CLI into $CARGO_TARGET_DIR (default ~/.cache/fhe-batch/target).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PEER_VENV:-$HOME/.cache/fhe-batch/cml-venv}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/fhe-batch/target}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import concrete.ml" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -r infra/requirements-peer.txt
fi
cargo build --release --locked -p fhe-batch-cli >/dev/null
exec "$VENV/bin/python" infra/peer_bench.py --fhe-batch "$CARGO_TARGET_DIR/release/fhe-batch" "$@"
