#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test of the workspace (release profile:
# FHE is unusably slow unoptimised, and one optimised build then serves tests, demo and bench).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fhe-batch/target}"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets --locked -- -D warnings
cargo test --release --workspace --locked
