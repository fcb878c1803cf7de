#!/usr/bin/env python3
"""Per-tensor fingerprints of llama-quantize's output, the reference for retort's converter.

SmolLM2-135M-Instruct Q4_1 -> `retort convert --type f32` -> llama-quantize to each type
(from the same f32 file). For every output tensor: its GGUF type and the FNV-1a 64 hash
of its bytes (FNV because it takes five lines in Rust too). tests/convert_matches_llama_quantize.rs
re-runs the conversion with retort and compares.

    eval "$(../shared/tools/llama-peer.sh)"
    target/release/retort convert models-cache/SmolLM2-135M-Instruct.Q4_1.gguf -o /tmp/smol-f32.gguf --type f32
    /work/venv-ref/bin/python scripts/reference/llama_quantize_hashes.py /tmp/smol-f32.gguf
"""
import json, os, subprocess, sys, tempfile
from pathlib import Path
from gguf import GGUFReader

ROOT = Path(__file__).resolve().parents[2]
# retort --type -> llama-quantize arguments (the pure K types: every weight that type, the tied
# embedding/output Q8_0 as llama.cpp's output rule gives for rows of 576)
TYPES = {
    "f16": ["F16"], "bf16": ["BF16"], "q8_0": ["Q8_0"], "q4_0": ["Q4_0"], "q4_1": ["Q4_1"], "q5_0": ["Q5_0"],
    "q5_1": ["Q5_1"], "q2_k": ["Q2_K"], "q6_k": ["Q6_K"], "q4_k_m": ["Q4_K_M"], "q5_k_m": ["Q5_K_M"],
    "q3_k": ["--pure", "--token-embedding-type", "q8_0", "Q3_K_S"],
    "q4_k": ["--pure", "--token-embedding-type", "q8_0", "Q4_K_S"],
    "q5_k": ["--pure", "--token-embedding-type", "q8_0", "Q5_K_S"],
}


def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def main():
    f32 = sys.argv[1]
    quantize = os.environ["LLAMA_QUANTIZE"]
    out = {"source": "SmolLM2-135M-Instruct.Q4_1.gguf -> retort convert --type f32", "llama_quantize": quantize, "types": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in TYPES.items():
            dst = Path(tmp) / f"{name}.gguf"
            flags, ftype = args[:-1], args[-1]
            subprocess.run([quantize, *flags, f32, str(dst), ftype, "2"], check=True, capture_output=True)
            r = GGUFReader(dst)
            import numpy as np
            out["types"][name] = {
                "llama_quantize_args": args,
                "tensors": {t.name: [t.tensor_type.name.lower(), fnv1a64(np.ascontiguousarray(t.data).tobytes())] for t in r.tensors},
            }
            print(name, len(r.tensors), file=sys.stderr)
    path = ROOT / "tests" / "fixtures" / "llama_cpp" / "quantize_hashes.json"
    path.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
