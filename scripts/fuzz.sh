#!/usr/bin/env bash
# Fuzzes retort's parsers of untrusted bytes with cargo-fuzz (libFuzzer + AddressSanitizer,
# overflow checks and debug assertions on).
#
#   scripts/fuzz.sh                   every target, 60 s each, one after the other
#   scripts/fuzz.sh gguf_body 300     one target for 300 s
#   scripts/fuzz.sh all 30            every target, 30 s each
#   scripts/fuzz.sh check             no fuzzing: runs every target once over its seeds and
#                                     fuzz/regressions/<target>/ (a quick regression check)
#   scripts/fuzz.sh list              the targets
#
# Targets (fuzz/fuzz_targets/): gguf_header, gguf_body, safetensors_header, tokenizer_vocab,
# tokenizer_encode, chat_template. tokenizer_encode uses models-cache/SmolLM2-135M-Instruct.Q4_1.gguf
# (scripts/fetch-models.sh) or $RETORT_FUZZ_VOCAB when present.
# Extra libFuzzer flags can follow the seconds: scripts/fuzz.sh gguf_body 60 -only_ascii=1.
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer=address, ...); this project builds on
# stable, so RUSTC_BOOTSTRAP=1 unlocks them. The growing corpus lives in fuzz/corpus/<target>/
# (not committed), crashes in fuzz/artifacts/<target>/, logs in fuzz/logs/. A crash is a real
# bug: minimize it (cargo fuzz tmin <target> <file>, with RUSTC_BOOTSTRAP=1), commit it under
# fuzz/regressions/<target>/ and fix the parser.
set -euo pipefail

cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1

ALL_TARGETS=(gguf_header gguf_body safetensors_header tokenizer_vocab tokenizer_encode chat_template)
target=${1:-all}
seconds=${2:-60}
shift $(( $# > 2 ? 2 : $# ))
extra_flags=("$@")

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

# Read-only seed directories and libFuzzer flags of each target.
seeds_of() {
    case "$1" in
        gguf_header | gguf_body) echo fuzz/seeds/gguf ;;
        chat_template) echo fuzz/seeds/chat_template ;;
        tokenizer_encode) echo fuzz/seeds/text ;;
        safetensors_header) echo fuzz/seeds/safetensors ;;
        *) ;;
    esac
}
flags_of() {
    case "$1" in
        # The tiny_llama seed is 18 KB; let inputs grow a little past it.
        gguf_header | gguf_body) echo "-max_len=32768" ;;
        # A render under the target's limits (256 KB of output) never needs a 256 MB block.
        chat_template) echo "-dict=fuzz/jinja.dict -max_len=8192 -malloc_limit_mb=256" ;;
        # Structured input (a vocabulary builder, then text): longer inputs from the start.
        tokenizer_vocab) echo "-max_len=4096 -len_control=0" ;;
        tokenizer_encode) echo "-max_len=4096" ;;
        safetensors_header) echo "-dict=fuzz/safetensors.dict -max_len=4096" ;;
        *) ;;
    esac
}

build() {
    cargo fuzz build --debug-assertions "$1"
}

run_one() {
    local t=$1 secs=$2
    local corpus=fuzz/corpus/$t
    mkdir -p "$corpus" "fuzz/artifacts/$t" fuzz/logs
    local seeds
    seeds=$(seeds_of "$t")
    build "$t"
    echo "== $t: ${secs}s" >&2
    # shellcheck disable=SC2046
    cargo fuzz run --debug-assertions "$t" "$corpus" $seeds -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        $(flags_of "$t") "${extra_flags[@]}" 2>&1 | tee "fuzz/logs/$t.log"
    local status=${PIPESTATUS[0]}
    summary "$t"
    return "$status"
}

check_one() {
    local t=$1
    local dirs=()
    local seeds
    seeds=$(seeds_of "$t")
    [ -n "$seeds" ] && dirs+=("$seeds")
    [ -d "fuzz/regressions/$t" ] && dirs+=("fuzz/regressions/$t")
    if [ ${#dirs[@]} -eq 0 ]; then
        echo "== $t: no seeds or regressions to check" >&2
        return 0
    fi
    build "$t"
    echo "== $t: checking ${dirs[*]}" >&2
    # -runs=0: execute the given inputs once each, no mutation. Directories are only read.
    mkdir -p "fuzz/artifacts/$t"
    cargo fuzz run --debug-assertions "$t" "${dirs[@]}" -- -runs=0 -timeout=10 $(flags_of "$t") "${extra_flags[@]}"
}

summary() {
    local log=fuzz/logs/$1.log
    local runs rate corp
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    corp=$(grep -o 'DONE .* corp: [0-9]*/[0-9a-zA-Z]*' "$log" | grep -o '[0-9]*/[0-9a-zA-Z]*$' || true)
    echo "== $1: ${runs:-?} runs, ${rate:-?} exec/s, corpus ${corp:-?} (inputs/bytes)" >&2
}

case "$target" in
    list) printf '%s\n' "${ALL_TARGETS[@]}" ;;
    check)
        failed=()
        for t in "${ALL_TARGETS[@]}"; do check_one "$t" || failed+=("$t"); done
        if [ ${#failed[@]} -gt 0 ]; then
            echo "fuzz.sh: regressions fail in: ${failed[*]}" >&2
            exit 1
        fi
        ;;
    all)
        failed=()
        for t in "${ALL_TARGETS[@]}"; do run_one "$t" "$seconds" || failed+=("$t"); done
        if [ ${#failed[@]} -gt 0 ]; then
            echo "fuzz.sh: crashes or errors in: ${failed[*]} (see fuzz/artifacts/)" >&2
            exit 1
        fi
        ;;
    *)
        if [[ ! " ${ALL_TARGETS[*]} " =~ " $target " ]]; then
            echo "fuzz.sh: unknown target '$target' (targets: ${ALL_TARGETS[*]})" >&2
            exit 2
        fi
        run_one "$target" "$seconds"
        ;;
esac
