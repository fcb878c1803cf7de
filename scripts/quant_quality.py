#!/usr/bin/env python3
"""Quantization quality on a real model (needs numpy): SmolLM2-135M-Instruct Q4_1 -> f32 (the truth we
have) -> each output type with `retort convert`; for each file the perplexity on GPL-3
(-c 512, llama.cpp's protocol) and the mean KL(f32 || quantized) over the first 256 tokens
of GPL-3, both computed by retort's exact (f32) runtime. Prints a markdown table.

    /work/venv-ref/bin/python scripts/quant_quality.py [--threads 2] [--types q4_0,q4_k_m,...] [--llama-quantize PATH]

With --llama-quantize, the same types are also made by llama-quantize from the same f32
file and measured the same way (tests/convert_matches_llama_quantize.rs shows the files
are byte-identical, so the two columns should agree exactly).
"""
import argparse, json, subprocess, sys, tempfile
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RETORT = Path(__import__("os").environ.get("RETORT_BIN", ROOT / "target" / "release" / "retort"))
TYPES = ["f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_k", "q5_1", "q5_0", "q4_k_m", "q4_k", "q4_1", "q4_0", "q3_k", "q2_k"]
LQ_ARGS = {"q3_k": ["--pure", "--token-embedding-type", "q8_0", "Q3_K_S"], "q4_k": ["--pure", "--token-embedding-type", "q8_0", "Q4_K_S"],
           "q5_k": ["--pure", "--token-embedding-type", "q8_0", "Q5_K_S"]}


def run(*args):
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True).stdout


def logits(model, tokens, threads, out):
    run(RETORT, "eval", model, "--tokens", ",".join(map(str, tokens)), "--logits-out", out, "-t", threads)
    return np.load(out).astype(np.float64)


def log_softmax(x):
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def measure(model, ref_lp, tokens, threads, tmp):
    lp = log_softmax(logits(model, tokens, threads, Path(tmp) / "q.npy"))
    kl = (np.exp(ref_lp) * (ref_lp - lp)).sum(axis=-1).mean()
    ppl = json.loads(run(RETORT, "perplexity", model, "-f", ROOT / "tests/data/GPL-3", "-c", "512", "--json", "-t", threads))["ppl"]
    return ppl, kl, Path(model).stat().st_size


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="2")
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--llama-quantize")
    args = ap.parse_args()
    source = ROOT / "models-cache" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokens = json.loads((ROOT / "tests/fixtures/smollm2/gpl3_logits.json").read_text())["token_ids"]
    with tempfile.TemporaryDirectory() as tmp:
        f32 = Path(tmp) / "f32.gguf"
        run(RETORT, "convert", source, "-o", f32, "--type", "f32")
        ref_lp = log_softmax(logits(f32, tokens, args.threads, Path(tmp) / "ref.npy"))
        ppl, _, size = measure(f32, ref_lp, tokens, args.threads, tmp)
        print("| type | size MiB | PPL (retort convert) | KL vs f32 (retort convert) |" + (" PPL (llama-quantize) | KL (llama-quantize) |" if args.llama_quantize else ""))
        print("| --- | ---: | ---: | ---: |" + (" ---: | ---: |" if args.llama_quantize else ""))
        print(f"| f32 | {size / 2**20:.1f} | {ppl:.4f} | 0 |" + (" | |" if args.llama_quantize else ""), flush=True)
        for t in args.types.split(","):
            out = Path(tmp) / f"{t}.gguf"
            run(RETORT, "convert", f32, "-o", out, "--type", t)
            ppl, kl, size = measure(out, ref_lp, tokens, args.threads, tmp)
            row = f"| {t} | {size / 2**20:.1f} | {ppl:.4f} | {kl:.5f} |"
            if args.llama_quantize:
                lq = Path(tmp) / f"lq-{t}.gguf"
                largs = LQ_ARGS.get(t, [t.upper()])
                run(args.llama_quantize, *largs[:-1], f32, lq, largs[-1], "2")
                lppl, lkl, _ = measure(lq, ref_lp, tokens, args.threads, tmp)
                row += f" {lppl:.4f} | {lkl:.5f} |"
                lq.unlink()
            out.unlink()
            print(row, flush=True)


if __name__ == "__main__":
    sys.exit(main())
