#!/usr/bin/env python3
"""Writes kernels/tests/fixtures/quants/: reference (de)quantization results for every
GGUF tensor type in retort's dtype table, computed with the `gguf` package (gguf.quants),
the Python reference that ships with llama.cpp.

Run with the reference venv:  /work/venv-ref/bin/python scripts/reference/quant_fixtures.py

Output (small, committed, so a checkout tests without Python):
  index.json            sizes from gguf.constants.GGML_QUANT_SIZES, and the list of cases
  <type>.blocks.bin     random blocks (scale fields finite and moderate)
  <type>.values.bin     their dequantization, f32 little-endian
  <type>.edges.*.bin    float types only: special bit patterns (inf, -0, subnormals)
  <type>.qin.bin        f32 rows to quantize
  <type>.qout.bin       the quantized bytes

gguf.quants has no Q8_K (ggml only uses it for activations). Its expected values are
computed here from the definition instead:
  dequantize: value = d * q, d the block's f32 scale, q the int8 quant.
  quantize:   ggml's quantize_row_q8_K_ref: the signed value of largest magnitude m gives
              iscale = -127/m, q = min(127, round-half-even(iscale * x)), d = 1/iscale,
              bsums = sums of 16 consecutive q. A block of zeros gets d = 0, q = 0, and
              bsums = 0 here (ggml leaves bsums untouched there).
"""
from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

OUT = Path(__file__).resolve().parents[2] / "kernels" / "tests" / "fixtures" / "quants"
SEED = 20240611

# ggml's type names (ggml_type_name): lower case, except the K of the k-quants.
def ggml_name(t: T) -> str:
    return t.name.lower().replace("_k", "_K")


TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
         T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_K]

# Byte offsets of the f16 scale fields inside one block (ggml-common.h block structs).
F16_SCALE_OFFSETS = {
    T.Q4_0: [0],          # d
    T.Q4_1: [0, 2],       # d, m
    T.Q5_0: [0],          # d
    T.Q5_1: [0, 2],       # d, m
    T.Q8_0: [0],          # d
    T.Q2_K: [80, 82],     # scales[16], qs[64], then d, dmin
    T.Q3_K: [108],        # hmask[32], qs[64], scales[12], then d
    T.Q4_K: [0, 2],       # d, dmin first
    T.Q5_K: [0, 2],       # d, dmin first
    T.Q6_K: [208],        # ql[128], qh[64], scales[16], then d
}

rng = np.random.default_rng(SEED)


def moderate_scales(n: int) -> np.ndarray:
    """Random f32 scales over many decades, some small enough to be f16 subnormals."""
    sign = rng.choice([-1.0, 1.0], size=n)
    return (sign * 10.0 ** rng.uniform(-6.0, 1.0, size=n)).astype(np.float32)


def random_blocks(t: T, n_blocks: int) -> np.ndarray:
    block_size, type_size = GGML_QUANT_SIZES[t]
    if t == T.F32:
        return (rng.standard_normal(n_blocks) * 10.0 ** rng.uniform(-3, 3, n_blocks)).astype("<f4").view(np.uint8)
    if t == T.F16:
        return (rng.standard_normal(n_blocks) * 10.0 ** rng.uniform(-3, 3, n_blocks)).astype("<f2").view(np.uint8)
    if t == T.BF16:
        bits = (rng.standard_normal(n_blocks) * 10.0 ** rng.uniform(-3, 3, n_blocks)).astype("<f4").view(np.uint32)
        return (bits >> 16).astype("<u2").view(np.uint8)
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    if t == T.Q8_K:
        blocks[:, 0:4] = moderate_scales(n_blocks).astype("<f4").view(np.uint8).reshape(n_blocks, 4)
    for off in F16_SCALE_OFFSETS.get(t, []):
        blocks[:, off:off + 2] = moderate_scales(n_blocks).astype("<f2").view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(-1)


def float_edge_bits(t: T) -> np.ndarray:
    """Bit patterns a float decoder gets wrong first: zeros, subnormals, extremes, infinities."""
    if t == T.F32:
        bits = [0x00000000, 0x80000000, 0x00000001, 0x807fffff, 0x00800000, 0x7f7fffff,
                0xff7fffff, 0x7f800000, 0xff800000, 0x3f800000, 0xbf800001]
        return np.array(bits, dtype="<u4").view(np.uint8)
    # F16 and BF16: a stride through all 16-bit patterns (every exponent, both signs), plus
    # the boundaries; NaNs left out (their payloads are not specified).
    exp_mask, man_mask = (0x7c00, 0x03ff) if t == T.F16 else (0x7f80, 0x007f)
    boundaries = [0x0000, 0x8000, 0x0001, 0x8001, man_mask, man_mask + 1, exp_mask - 1,
                  exp_mask, 0x8000 | exp_mask, 0x3c00 if t == T.F16 else 0x3f80]
    bits = np.concatenate([np.arange(0, 1 << 16, 61, dtype=np.uint32), np.array(boundaries, dtype=np.uint32)])
    is_nan = ((bits & exp_mask) == exp_mask) & ((bits & man_mask) != 0)
    return bits[~is_nan].astype("<u2").view(np.uint8)


def dequantize(t: T, blocks: np.ndarray) -> np.ndarray:
    if t == T.Q8_K:
        return dequantize_q8_k(blocks)
    return np.asarray(gguf.quants.dequantize(blocks, t), dtype=np.float32).reshape(-1)


def dequantize_q8_k(blocks: np.ndarray) -> np.ndarray:
    # block_q8_K: f32 d, int8 qs[256], int16 bsums[16]; the bsums do not enter the values.
    b = blocks.reshape(-1, GGML_QUANT_SIZES[T.Q8_K][1])
    d = b[:, 0:4].copy().view("<f4").astype(np.float32)
    q = b[:, 4:4 + 256].copy().view(np.int8).astype(np.float32)
    return (d * q).astype(np.float32).reshape(-1)


def quantize_q8_k(x: np.ndarray) -> np.ndarray:
    out = []
    for block in x.reshape(-1, 256).astype(np.float32):
        amax_index = int(np.argmax(np.abs(block)))  # first of equal magnitudes, as ggml's strict >
        m = block[amax_index]
        if m == 0:
            d, q = np.float32(0), np.zeros(256, dtype=np.int8)
        else:
            iscale = np.float32(-127.0) / m
            q = np.minimum(np.rint(iscale * block), 127).astype(np.int8)  # rint: ties to even
            d = np.float32(1.0) / iscale
        bsums = q.astype(np.int16).reshape(16, 16).sum(axis=1).astype("<i2")
        out.append(np.concatenate([np.array([d], "<f4").view(np.uint8), q.view(np.uint8), bsums.view(np.uint8)]))
    return np.concatenate(out)


def quantize(t: T, x: np.ndarray) -> np.ndarray:
    if t == T.Q8_K:
        return quantize_q8_k(x)
    with np.errstate(over="ignore"):  # F16 inputs past 65504 overflow to inf on purpose
        q = gguf.quants.quantize(x.reshape(1, -1), t)
    return np.ascontiguousarray(q).view(np.uint8).reshape(-1)


def quantize_input(t: T) -> np.ndarray:
    """Random rows over several magnitudes, plus the blocks that take a quantizer's side paths."""
    block_size = GGML_QUANT_SIZES[t][0]
    if block_size == 1:
        return float_quantize_input(t)
    rows = []
    for scale in (1e-3, 0.5, 30.0):
        rows.append(rng.standard_normal(block_size) * scale)
    rows.append(np.zeros(block_size))                        # d = 0: the 1/d guard
    rows.append(np.full(block_size, 0.75))                    # max == min for the _1 types
    one_hot = np.zeros(block_size); one_hot[block_size // 3] = -2.5
    rows.append(one_hot)                                      # a lone negative extreme
    ties = np.zeros(block_size); ties[0] = 3.0; ties[1] = -3.0
    rows.append(ties + rng.standard_normal(block_size) * 0.01)  # equal magnitudes: the first wins
    rows.append(rng.uniform(-1.0, 1.0, block_size) + 5.0)    # all positive, offset from zero
    # extreme 127 makes the Q8 scales exactly +-1, so the half-integers are rounding ties
    # (Q8_0 rounds them away from zero, Q8_K to even)
    half_integers = rng.integers(-100, 100, block_size) + 0.5
    half_integers[block_size // 2] = 127.0
    rows.append(half_integers)
    return np.concatenate(rows).astype(np.float32)


def float_quantize_input(t: T) -> np.ndarray:
    values = list(rng.standard_normal(64) * 10.0 ** rng.uniform(-8, 5, 64))
    if t == T.F16:
        # overflow to inf, round-to-even ties, subnormal results, underflow to zero
        values += [65504.0, 65520.0, 70000.0, -1e6, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11,
                   2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26, 1e-9, -0.0, np.inf, -np.inf]
        return np.array(values, dtype=np.float32)
    if t == T.BF16:
        x = np.array(values, dtype=np.float32).view(np.uint32)
        special = [0x3f808000, 0x3f818000, 0x3f80ffff, 0x7f7fffff, 0xff7fffff,  # ties, carry, overflow
                   0x00000001, 0x80008000, 0x7f800000, 0xff800000, 0x80000000,
                   0x7fc00000, 0xffc00001, 0x7f800001, 0x7fbfffff, 0xff812345]  # quiet/signalling NaNs
        return np.concatenate([x, np.array(special, dtype=np.uint32)]).view(np.float32)
    return np.array(values + [np.inf, -0.0, 1e-45], dtype=np.float32)


def write(name: str, data: np.ndarray) -> str:
    (OUT / name).write_bytes(np.ascontiguousarray(data).tobytes())
    return name


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    index = {
        "generator": "scripts/reference/quant_fixtures.py",
        "gguf_version": importlib.metadata.version("gguf"),
        "numpy_version": np.__version__,
        "types": {},
        "dequantize": [],
        "quantize": [],
    }
    for t in TYPES:
        name = ggml_name(t)
        block_size, type_size = GGML_QUANT_SIZES[t]
        index["types"][name] = {"ggml_id": int(t), "block_size": block_size, "type_size": type_size}

        n_blocks = {1: 256, 32: 8, 256: 4}[block_size]
        blocks = random_blocks(t, n_blocks)
        values = dequantize(t, blocks)
        assert values.size == n_blocks * block_size and np.all(np.isfinite(values)), name
        index["dequantize"].append({
            "type": name, "note": "random blocks",
            "blocks": write(f"{name}.blocks.bin", blocks),
            "values": write(f"{name}.values.bin", values.astype("<f4")),
        })
        if block_size == 1:
            edges = float_edge_bits(t)
            index["dequantize"].append({
                "type": name, "note": "special bit patterns",
                "blocks": write(f"{name}.edges.blocks.bin", edges),
                "values": write(f"{name}.edges.values.bin", dequantize(t, edges).astype("<f4")),
            })

        if t in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K):
            continue  # gguf.quants cannot quantize the k-quants; retort leaves them None for now
        x = quantize_input(t)
        index["quantize"].append({
            "type": name,
            "input": write(f"{name}.qin.bin", x.astype("<f4")),
            "output": write(f"{name}.qout.bin", quantize(t, x)),
        })

    (OUT / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total} bytes, to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
