#!/usr/bin/env python3
"""An FP8 checkpoint for `retort convert`: the qwen3 fixture (tests/fixtures/hf/qwen3) with
every 2-D layer weight stored as float8_e4m3fn plus a float32 `weight_scale_inv` per
128x128 block (scale = block amax / 448), as DeepSeek V3/R1 and Qwen3-FP8 ship. Records,
per FP8 tensor, the FNV-1a 64 hash of torch's dequantization (fp8.float() * scale, as
float32 bytes): the converted f32 GGUF must hold exactly those bytes.

    /work/venv-ref/bin/python scripts/reference/fp8_fixture.py
"""
import json, shutil
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
SRC, DST, BLOCK = ROOT / "tests/fixtures/hf/qwen3", ROOT / "tests/fixtures/hf_fp8", 128
GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def main():
    if DST.exists():
        shutil.rmtree(DST)
    shutil.copytree(SRC, DST)
    weights = load_file(DST / "model.safetensors")
    out, expected = {}, {}
    for name, w in weights.items():
        if w.dim() != 2 or "embed" in name or "lm_head" in name:
            out[name] = w
            continue
        f = w.float()
        rows, cols = f.shape
        scale = torch.zeros((rows + BLOCK - 1) // BLOCK, (cols + BLOCK - 1) // BLOCK)
        q = torch.zeros(rows, cols, dtype=torch.float8_e4m3fn)
        for i in range(scale.shape[0]):
            for j in range(scale.shape[1]):
                blk = f[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK]
                scale[i, j] = blk.abs().max() / 448.0
                q[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK] = (blk / scale[i, j]).to(torch.float8_e4m3fn)
        out[name], out[name + "_scale_inv"] = q, scale
        full = torch.repeat_interleave(torch.repeat_interleave(scale, BLOCK, 0), BLOCK, 1)[:rows, :cols]
        layer, param = name.removeprefix("model.layers.").split(".", 1)
        gguf = f"blk.{layer}.{GGUF_NAMES[param.removesuffix('.weight')]}.weight"
        expected[gguf] = fnv1a64((q.float() * full).numpy().astype("<f4").tobytes())
    save_file(out, DST / "model.safetensors")
    (DST / "expected_f32.json").write_text(json.dumps({"block": BLOCK, "fnv1a64_of_dequantized_f32": expected}, indent=1, sort_keys=True) + "\n")
    print(len(expected), "fp8 tensors")


if __name__ == "__main__":
    main()
