#!/usr/bin/env python3
"""Writes kernels/tests/fixtures/kquants/: ggml's own K-quant quantizations of seeded random
rows, the reference that retort's Q2_K..Q6_K quantizers must match byte for byte.

The expected blocks come from ggml itself, not a re-implementation: libggml-base.so of the
peer llama.cpp build is loaded with ctypes and quantize_row_q{2,3,4,5,6}_K_ref is called on
each row. That library is built for baseline x86-64 (ggml-base gets no -march flags; only
ggml-cpu does), so it has no FMA instructions: GCC's default -ffp-contract=fast has nothing
to contract into, and every float operation in those functions is a separately rounded SSE
op, as in Rust.

Run with the reference venv:
    /work/venv-ref/bin/python scripts/reference/kquant_fixtures.py
    /work/venv-ref/bin/python scripts/reference/kquant_fixtures.py --out /tmp/kq --rows 200
The second form (not committed) writes many more rows per distribution into another
directory; the Rust test reads it when RETORT_KQUANT_FIXTURES points there.

Output (small and committed, so a checkout tests without Python or ggml):
  index.json      ggml library and build facts, and the cases in order: name, values
  inputs.bin      every case's input row, f32 little-endian, concatenated in case order
  <type>.bin      ggml's blocks for each case's row, concatenated in the same order
"""
from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "kernels" / "tests" / "fixtures" / "kquants"
PEER = Path("/root/.cache/retort-peer")
LIB = PEER / "llama.cpp-build" / "bin" / "libggml-base.so"
SEED = 20250117
QK_K = 256

# ggml type name -> bytes per 256-value block (sizeof(block_qX_K) in ggml-common.h).
TYPES = {"q2_K": 84, "q3_K": 110, "q4_K": 144, "q5_K": 176, "q6_K": 210}


def load_ggml() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(LIB))
    for name in TYPES:
        fn = getattr(lib, f"quantize_row_{name}_ref")
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        fn.restype = None
    return lib


def quantize(lib: ctypes.CDLL, name: str, x: np.ndarray) -> bytes:
    x = np.ascontiguousarray(x, dtype="<f4")
    assert x.size % QK_K == 0
    # Filled with a pattern, not zeros: a byte ggml leaves unwritten would show up as 0xA5.
    size = x.size // QK_K * TYPES[name]
    out = ctypes.create_string_buffer(b"\xa5" * size, size)
    getattr(lib, f"quantize_row_{name}_ref")(x.ctypes.data, out, x.size)
    return out.raw


# The distributions. Each takes (rng, n) and returns n values; every one is drawn for a row
# of 256 (one super-block) and a row of 512 (two, so the per-block state is reset).
def normal(rng, n):
    return rng.standard_normal(n)


def uniform(rng, n):
    return rng.uniform(-1.0, 1.0, n)


def heavy_tailed(rng, n):
    # Student t with 2 degrees of freedom, plus a few outliers 100x the bulk: one group's
    # extreme sets the super-block scale and squeezes every other group's integer scale.
    x = rng.standard_t(2.0, n)
    outliers = rng.choice(n, size=max(1, n // 128), replace=False)
    x[outliers] = rng.choice([-1.0, 1.0], outliers.size) * rng.uniform(50.0, 150.0, outliers.size)
    return x


def zeros(rng, n):
    return np.zeros(n)


def constant(rng, n):
    # max == min inside every group; positive and negative blocks take different branches of
    # the min clamp (a positive constant gets min 0, a negative one keeps itself as the min).
    values = [0.75, -2.5]
    return np.concatenate([np.full(QK_K, values[b % 2]) for b in range(n // QK_K)])


def tiny(rng, n):
    # ~1e-8: above ggml's GROUP_MAX_EPS (1e-15), but the super-block scales are below the
    # smallest f16 subnormal, so d rounds to 0 while the group scales are not 0.
    return rng.standard_normal(n) * 1e-8


def mixed_sign(rng, n):
    # Each 16-value group all positive, all negative, or mixed, at its own magnitude.
    x = np.abs(rng.standard_normal(n)) * np.repeat(10.0 ** rng.uniform(-1, 1, n // 16), 16)
    signs = rng.choice(3, n // 16)
    for g, kind in enumerate(signs):
        group = x[16 * g:16 * g + 16]
        if kind == 1:
            group *= -1.0
        elif kind == 2:
            group *= rng.choice([-1.0, 1.0], 16)
    return x


def group_scales(rng, n):
    # Groups over four decades: small groups quantize to integer scale 0 (d * 0 == 0 skips
    # the refit) or 1, the rounding edge of the 4- and 6-bit scales.
    return rng.standard_normal(n) * np.repeat(10.0 ** rng.uniform(-3, 1, n // 16), 16)


def sparse(rng, n):
    # Mostly exact zeros, whole groups of them, and single spikes.
    x = np.zeros(n)
    hits = rng.choice(n, size=n // 20, replace=False)
    x[hits] = rng.standard_normal(hits.size) * 3.0
    return x


def positive_offset(rng, n):
    # All positive: the fitted min of the affine types goes positive and is clamped to 0.
    return rng.normal(3.0, 1.0, n)


def integers(rng, n):
    # Small integers: many values sit exactly on the levels of several trial scales, and
    # many products tie, so any difference in rounding or comparison order shows.
    return rng.integers(-8, 9, n).astype(np.float64)


def near_eps(rng, n):
    # Groups whose largest magnitude straddles GROUP_MAX_EPS (1e-15): some are treated as
    # zero, the others run the fits with x^2 * x * l products in the f32 subnormal range.
    return rng.standard_normal(n) * np.repeat(10.0 ** rng.uniform(-16, -12, n // 16), 16)


def sparse_signed_zeros(rng, n):
    # Zeros of both signs around a few values: -0.0 must compare and propagate as in C.
    x = rng.choice([0.0, -0.0], n)
    hits = rng.choice(n, size=n // 64, replace=False)
    x[hits] = rng.standard_normal(hits.size)
    return x


DISTRIBUTIONS = [normal, uniform, heavy_tailed, zeros, constant, tiny, mixed_sign,
                 group_scales, sparse, positive_offset, integers, near_eps, sparse_signed_zeros]


def build_facts() -> dict:
    facts = {"library": str(LIB)}
    commands = PEER / "llama.cpp-build" / "compile_commands.json"
    try:
        for entry in json.loads(commands.read_text()):
            if entry["file"].endswith("ggml-quants.c"):
                command = entry.get("command") or " ".join(entry["arguments"])
                flags = [f for f in command.split() if f.startswith(("-O", "-f", "-m", "-std"))]
                facts["ggml_quants_c_flags"] = " ".join(flags)
        compiler = subprocess.run(["cc", "--version"], capture_output=True, text=True, check=True)
        facts["compiler"] = compiler.stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError, KeyError, json.JSONDecodeError) as e:
        facts["note"] = f"build facts unavailable: {e}"
    return facts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="fixture directory")
    parser.add_argument("--rows", type=int, default=1,
                        help="rows of each length per distribution (1 for the committed set)")
    args = parser.parse_args()

    lib = load_ggml()
    rng = np.random.default_rng(SEED)
    args.out.mkdir(parents=True, exist_ok=True)
    index = {
        "generator": "scripts/reference/kquant_fixtures.py",
        "numpy_version": np.__version__,
        "seed": SEED,
        "build": build_facts(),
        "types": TYPES,
        "cases": [],
    }
    inputs = []
    blocks = {name: [] for name in TYPES}
    for make in DISTRIBUTIONS:
        for n in (QK_K, 2 * QK_K):
            for row in range(args.rows):
                x = make(rng, n).astype(np.float32)
                assert np.all(np.isfinite(x))
                inputs.append(x.astype("<f4").tobytes())
                for name in TYPES:
                    blocks[name].append(quantize(lib, name, x))
                case = f"{make.__name__}_{n}" + (f"_{row}" if args.rows > 1 else "")
                index["cases"].append({"name": case, "values": n})
    (args.out / "inputs.bin").write_bytes(b"".join(inputs))
    for name in TYPES:
        (args.out / f"{name}.bin").write_bytes(b"".join(blocks[name]))
    (args.out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    total = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {len(index['cases'])} cases, {total} bytes, to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
