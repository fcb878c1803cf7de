#!/usr/bin/env python3
"""A Hugging Face checkpoint folder with the shapes of a real model and random bf16
weights, for benchmarks that need real sizes (conversion memory and speed, CPU speed on
weights that do not fit in cache). Tokenizer files come from a small committed fixture
(the embedding is larger than its vocabulary; the converter pads the vocabulary).

    python3 scripts/make_synthetic_checkpoint.py OUT_DIR [--shape r1-distill-qwen-7b|r1-distill-qwen-1.5b] [--shard-gb 4]

Needs numpy only. Writes about 15 GB for the 7B shape, 3.5 GB for 1.5B.
"""
import argparse, json, shutil, struct
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    # DeepSeek-R1-Distill-Qwen-7B / -1.5B config.json values (Qwen2 architecture)
    "r1-distill-qwen-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                               num_key_value_heads=4, vocab_size=152064),
    "r1-distill-qwen-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                                 num_key_value_heads=2, vocab_size=151936),
}


def tensors(c):
    h, f, kv = c["hidden_size"], c["intermediate_size"], c["num_key_value_heads"] * c["hidden_size"] // c["num_attention_heads"]
    yield "model.embed_tokens.weight", (c["vocab_size"], h)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (h,)
        yield p + "self_attn.q_proj.weight", (h, h)
        yield p + "self_attn.q_proj.bias", (h,)
        yield p + "self_attn.k_proj.weight", (kv, h)
        yield p + "self_attn.k_proj.bias", (kv,)
        yield p + "self_attn.v_proj.weight", (kv, h)
        yield p + "self_attn.v_proj.bias", (kv,)
        yield p + "self_attn.o_proj.weight", (h, h)
        yield p + "post_attention_layernorm.weight", (h,)
        yield p + "mlp.gate_proj.weight", (f, h)
        yield p + "mlp.up_proj.weight", (f, h)
        yield p + "mlp.down_proj.weight", (h, f)
    yield "model.norm.weight", (h,)
    yield "lm_head.weight", (c["vocab_size"], h)


def random_bf16(rng, n, norm):
    """bf16 bits of N(0, 0.02) (or of values near 1 for norm scales): the top half of f32."""
    x = rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
    if norm:
        x += np.float32(1.0)
    return (x.view(np.uint32) >> 16).astype(np.uint16)


def write_shard(path, items, rng):
    header, offset = {}, 0
    for name, shape in items:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(blob)))
        out.write(blob)
        for name, shape in items:
            n = int(np.prod(shape))
            for start in range(0, n, 1 << 26):
                out.write(random_bf16(rng, min(1 << 26, n - start), len(shape) == 1 and "norm" in name).tobytes())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--shape", default="r1-distill-qwen-7b", choices=SHAPES)
    ap.add_argument("--shard-gb", type=float, default=4.0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    c = SHAPES[args.shape]
    config = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu", max_position_embeddings=131072,
                  rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False, torch_dtype="bfloat16",
                  bos_token_id=151643, eos_token_id=151643, **c)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for f in (ROOT / "convert/tests/fixtures/tokenizers/qwen2").iterdir():
        if f.name != "config.json" and f.is_file():
            shutil.copy(f, out / f.name)
    rng = np.random.default_rng(0)
    shards, current, size, limit = [], [], 0, int(args.shard_gb * 2**30)
    for name, shape in tensors(c):
        n = int(np.prod(shape)) * 2
        if current and size + n > limit:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += n
    shards.append(current)
    weight_map, total = {}, 0
    for i, items in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_shard(out / fname, items, rng)
        for name, shape in items:
            weight_map[name] = fname
            total += int(np.prod(shape)) * 2
        print(f"{fname}: {len(items)} tensors", flush=True)
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    print(f"{out}: {total / 1e9:.2f} GB in {len(shards)} shards")


if __name__ == "__main__":
    main()
