#!/usr/bin/env python3
"""Reference files for retort-convert's safetensors reader and checkpoint-folder loader,
written by the Python `safetensors` package and by transformers themselves, so that the Rust
side is checked against the real writers rather than against its own idea of the format.

    convert/tests/fixtures/safetensors/reference.safetensors
        F32, F16, BF16, F8_E4M3 (all 256 bit patterns, 16 x 16), I64, a scalar and an empty
        tensor, plus a __metadata__ table; written with safetensors.torch.save_file.
    convert/tests/fixtures/safetensors/reference.json
        per tensor: dtype, shape, and for the float tensors torch's float32 value of every
        element as its u32 bit pattern (exact, NaN payloads included); the metadata.
        The F8_E4M3 tensor's bits are torch.float8_e4m3fn -> float32 for bytes 0..=255, i.e.
        the decoding table of OCP e4m3fn.

    convert/tests/fixtures/checkpoint/single/    a tiny LlamaForCausalLM (bfloat16, llama3
        rope) saved by transformers 5 in one model.safetensors; its config.json has
        transformers 5's `rope_parameters`.
    convert/tests/fixtures/checkpoint/sharded/   the same weights saved with
        max_shard_size="20KB" (3 shards + model.safetensors.index.json); its config.json is
        rewritten the transformers 4 way: top-level `rope_theta` and `rope_scaling`.
    convert/tests/fixtures/checkpoint/manifest.json
        per folder: the architecture, the sorted tensor names, and the rope parameters that
        transformers 5 itself derives from that config.json (LlamaConfig.from_pretrained), so
        the Rust normalization is checked against transformers' own.
    convert/tests/fixtures/checkpoint/rope_variants.json
        more config.json rope spellings (transformers 4 and 5, legacy "type", yarn the
        DeepSeek and the Qwen way, none at all, rope_scaling next to rope_parameters), each
        with the rope_parameters transformers 5 standardizes it to and, for yarn, the
        attention factor its _compute_yarn_parameters returns.

Run:  /work/venv-ref/bin/python scripts/reference/safetensors_fixture.py
(needs torch, transformers >= 5 and safetensors: /work/venv-ref/bin/pip install safetensors)
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import safetensors
import torch
import transformers
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "convert" / "tests" / "fixtures"

ST_DTYPE = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.int64: "I64",
}


def f32_bits(t: torch.Tensor) -> list[int]:
    """torch's float32 value of each element, as unsigned 32-bit patterns."""
    return [b & 0xFFFFFFFF for b in t.to(torch.float32).contiguous().view(torch.int32).flatten().tolist()]


def write_safetensors_reference() -> None:
    out = FIXTURES / "safetensors"
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(7)
    f16_specials = torch.tensor(
        [0.0, -0.0, 1.0, -2.5, 65504.0, 6e-8, float("inf"), float("-inf"), float("nan")], dtype=torch.float16
    )
    tensors = {
        "f32": torch.randn(3, 4, generator=g),
        "f16": f16_specials,
        "bf16": (torch.randn(2, 3, generator=g) * 100).to(torch.bfloat16),
        # Every e4m3fn bit pattern: row r, column c holds byte 16 r + c.
        "f8_e4m3": torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).reshape(16, 16),
        "i64": torch.tensor([-1, 2**40], dtype=torch.int64),
        "scalar": torch.tensor(3.5, dtype=torch.float32),
        "empty": torch.zeros(0, 4, dtype=torch.float32),
    }
    metadata = {"format": "pt", "producer": "scripts/reference/safetensors_fixture.py"}
    save_file(tensors, str(out / "reference.safetensors"), metadata=metadata)

    expected = {"metadata": metadata, "tensors": {}}
    for name, t in tensors.items():
        entry = {"dtype": ST_DTYPE[t.dtype], "shape": list(t.shape)}
        if t.dtype.is_floating_point:
            entry["f32_bits"] = f32_bits(t)
        expected["tensors"][name] = entry
    (out / "reference.json").write_text(json.dumps(expected, indent=1) + "\n")


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    )
    return LlamaForCausalLM(config).to(torch.bfloat16)


def as_transformers4_config(config: dict) -> dict:
    """config.json the way transformers 4 wrote it: rope_theta at the top, the scaling
    parameters (without rope_theta) under rope_scaling, `torch_dtype` instead of `dtype`."""
    config = dict(config)
    rope = dict(config.pop("rope_parameters"))
    config["rope_theta"] = rope.pop("rope_theta")
    config["rope_scaling"] = rope
    config["torch_dtype"] = config.pop("dtype")
    config["transformers_version"] = "4.46.0"
    return config


def write_checkpoints() -> None:
    out = FIXTURES / "checkpoint"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model = tiny_llama()
    model.save_pretrained(out / "single")
    model.save_pretrained(out / "sharded", max_shard_size="20KB")
    shard_files = sorted(p.name for p in (out / "sharded").glob("model-*.safetensors"))
    assert len(shard_files) > 1, f"expected several shards, got {shard_files}"

    sharded_config = out / "sharded" / "config.json"
    t4 = as_transformers4_config(json.loads(sharded_config.read_text()))
    sharded_config.write_text(json.dumps(t4, indent=2, sort_keys=True) + "\n")

    manifest = {}
    for folder in ("single", "sharded"):
        loaded = LlamaConfig.from_pretrained(out / folder)
        manifest[folder] = {
            "architecture": loaded.architectures[0],
            "rope_parameters": dict(loaded.rope_parameters),
            "tensor_names": sorted(model.state_dict().keys()),
        }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def rope_variants() -> dict[str, dict]:
    """config.json rope spellings: overrides of a plain llama config (None deletes a key)."""
    return {
        "t5_default": {"rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}},
        "t5_linear": {"rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}},
        "t4_theta_only": {"rope_theta": 500000.0, "rope_scaling": None},
        "t4_nothing": {},
        "t4_legacy_type_linear": {"rope_theta": 20000, "rope_scaling": {"type": "linear", "factor": 2.0}},
        "t4_llama3": {
            "rope_theta": 500000.0,
            "max_position_embeddings": 131072,
            "rope_scaling": {
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
                "rope_type": "llama3",
            },
        },
        "t4_yarn_deepseek": {
            "rope_theta": 10000,
            "max_position_embeddings": 163840,
            "rope_scaling": {
                "beta_fast": 32,
                "beta_slow": 1,
                "factor": 40,
                "mscale": 1.0,
                "mscale_all_dim": 1.0,
                "original_max_position_embeddings": 4096,
                "type": "yarn",
            },
        },
        "t4_yarn_deepseek_mscale_differs": {
            "max_position_embeddings": 163840,
            "rope_scaling": {
                "factor": 40,
                "mscale": 0.707,
                "mscale_all_dim": 1.0,
                "original_max_position_embeddings": 4096,
                "type": "yarn",
            },
        },
        "t4_yarn_qwen": {
            "rope_theta": 1000000.0,
            "max_position_embeddings": 131072,
            "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "rope_type": "yarn"},
        },
        "t5_yarn_attention_factor": {
            "rope_parameters": {
                "rope_type": "yarn",
                "rope_theta": 150000.0,
                "factor": 32.0,
                "original_max_position_embeddings": 4096,
                "attention_factor": 1.25,
                "beta_fast": 16.0,
                "beta_slow": 2.0,
                "truncate": False,
            },
            "max_position_embeddings": 131072,
        },
        "t5_scaling_wins_over_parameters": {
            "rope_theta": 30000.0,
            "rope_scaling": {"rope_type": "linear", "factor": 2.0},
            "rope_parameters": {"rope_type": "linear", "factor": 3.0, "rope_theta": 7.0},
        },
        "t4_partial_rotary_factor": {"rope_theta": 10000.0, "partial_rotary_factor": 0.5},
    }


def write_rope_variants() -> None:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    base = json.loads((FIXTURES / "checkpoint" / "single" / "config.json").read_text())
    for key in ("rope_parameters", "rope_scaling", "rope_theta"):
        base.pop(key, None)
    out = {}
    for name, overrides in rope_variants().items():
        config = dict(base)
        for key, value in overrides.items():
            if value is None:
                config[key] = None
            else:
                config[key] = value
        loaded = LlamaConfig.from_dict(json.loads(json.dumps(config)))
        entry = {"config": config, "rope_parameters": dict(loaded.rope_parameters)}
        if loaded.rope_parameters["rope_type"] == "yarn":
            _, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](loaded, "cpu")
            entry["attention_factor"] = float(attention_factor)
        out[name] = entry
    (FIXTURES / "checkpoint" / "rope_variants.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


def main() -> None:
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, safetensors {safetensors.__version__}")
    write_safetensors_reference()
    write_checkpoints()
    write_rope_variants()
    for folder in (FIXTURES / "safetensors", FIXTURES / "checkpoint"):
        total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        print(f"wrote {folder.relative_to(ROOT)} ({total} bytes)")


if __name__ == "__main__":
    main()
