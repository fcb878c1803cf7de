#!/usr/bin/env bash
# Runs the kernels crate's tests on an emulated AVX-512 CPU (Bochs, Sapphire Rapids model:
# AVX-512 F/BW/VL with VNNI and BF16), where `simd::isa()` picks the AVX-512 variants and the
# tests compare them with the scalar reference and with the AVX2 kernels bit for bit. No
# machine here has AVX-512; see scripts/run-on-avx512-emulator.sh for how the emulator runs.
#
#   scripts/test-avx512.sh [TEST-FILTER...]
#
# The first run fetches a kernel and builds Bochs (about 5 minutes); a run after that boots in
# about 10 s and then runs the tests at roughly 1/20 of native speed.
set -euo pipefail
cd "$(dirname "$0")/.."
# Static, so the guest needs nothing but the binary; a separate target dir, so the flags do
# not rebuild the normal one.
binaries=$(RUSTFLAGS='-C target-feature=+crt-static' cargo test --release -p retort-kernels --no-run \
    --target x86_64-unknown-linux-gnu --target-dir target/avx512-emu --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["executable"])')
# The integration tests read their fixtures from the source tree's path.
export RETORT_EMU_FILES="$PWD/kernels/tests/fixtures"
status=0
for binary in $binaries; do
    echo "== $(basename "$binary") on the emulated AVX-512 CPU"
    scripts/run-on-avx512-emulator.sh "$binary" --test-threads 1 "$@" || status=$?
done
exit "$status"
