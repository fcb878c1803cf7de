#!/usr/bin/env python3
"""llama.cpp's distance from the exact reference on SmolLM2 Q4_1: its logits on the 256
GPL-3 tokens of tests/fixtures/smollm2/gpl3_logits.json, in one batch and one token at a
time (as generation runs), scored exactly as tests/smollm2_reference.rs scores retort's:
mean KL(ref || llama.cpp) per position over the reference's top 128 tokens plus a tail
bucket. Writes the figures into tests/fixtures/llama_cpp/smollm2_q4_1.json ("kl_gpl3"), the
bound retort's 8-bit-activation decode path is tested against.

    bash ../shared/tools/llama-peer.sh            # builds llama.cpp and its Python binding
    source /work/llama-peer.env                   # (or the exports it prints)
    $LLAMA_PY scripts/reference/llama_cpp_kl.py models-cache/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import json, math, sys
from pathlib import Path

import numpy as np
from llama_cpp import Llama

ROOT = Path(__file__).resolve().parents[2]


def mean_kl(logits, ref):
    total = 0.0
    for t, row in enumerate(logits):
        row = row.astype(np.float64)
        lse = row.max() + math.log(np.exp(row - row.max()).sum())
        kl = ref_mass = our_mass = 0.0
        for i, lp_ref in zip(ref["top_ids"][t], ref["top_logprobs"][t]):
            lp = row[i] - lse
            kl += math.exp(lp_ref) * (lp_ref - lp)
            ref_mass += math.exp(lp_ref)
            our_mass += math.exp(lp)
        ref_tail, our_tail = max(1 - ref_mass, 1e-12), max(1 - our_mass, 1e-12)
        total += kl + ref_tail * math.log(ref_tail / our_tail)
    return total / len(logits)


def logits_of(model_path, tokens, n_batch):
    llm = Llama(model_path=model_path, n_ctx=512, n_batch=n_batch, n_ubatch=n_batch, logits_all=True, n_threads=2, verbose=False)
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)


def main():
    model = sys.argv[1]
    ref = json.loads((ROOT / "tests/fixtures/smollm2/gpl3_logits.json").read_text())
    tokens = ref["token_ids"]
    figures = {}
    for name, n_batch in [("batch", 512), ("one_by_one", 1)]:
        logits = logits_of(model, tokens, n_batch)
        agree = int((logits.argmax(axis=1) == np.array(ref["argmax"])).sum())
        figures[name] = {"mean_kl": mean_kl(logits, ref), "argmax_agree": agree, "n": len(tokens)}
        print(name, figures[name])
    path = ROOT / "tests/fixtures/llama_cpp/smollm2_q4_1.json"
    doc = json.loads(path.read_text())
    doc["kl_gpl3"] = {"method": "mean KL(ref || llama.cpp), top-128 + tail bucket, scripts/reference/llama_cpp_kl.py", **figures}
    path.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
