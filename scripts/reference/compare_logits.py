#!/usr/bin/env python3
"""Compare retort's logits with the transformers float32 reference.

    retort eval models-cache/SmolLM2-135M-Instruct.Q4_1.gguf \
        --tokens $(python -c 'import json;print(",".join(map(str,json.load(open("tests/fixtures/smollm2/gpl3_logits.json"))["token_ids"])))') \
        --logits-out /tmp/ours.npy
    /work/venv-ref/bin/python scripts/reference/compare_logits.py /tmp/ours.npy

Prints argmax agreement, mean and max KL(ref || ours) in nats per position, and the worst
positions. Both arrays are [T, V]; if retort's has fewer rows than the reference (a shorter
prompt), only the first T positions are compared (the reference's token ids are those of
tests/fixtures/smollm2/gpl3_logits.json). Exit status 1 if the shapes cannot be compared,
or if --max-kl / --min-agreement are given and not met.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REF = ROOT / "models-cache" / "reference" / "smollm2_gpl3_logits.npy"


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ours", type=Path, help="retort's logits .npy, [T, V]")
    ap.add_argument("--ref", type=Path, default=DEFAULT_REF, help=f"reference .npy (default {DEFAULT_REF})")
    ap.add_argument("--worst", type=int, default=5, help="how many worst positions to list")
    ap.add_argument("--max-kl", type=float, help="fail if mean KL exceeds this")
    ap.add_argument("--min-agreement", type=float, help="fail if argmax agreement (%%) is below this")
    args = ap.parse_args()

    ref = np.load(args.ref)
    ours = np.load(args.ours)
    if ours.ndim == 1:
        ours = ours[None, :]
    if ref.ndim != 2 or ours.ndim != 2 or ref.shape[1] != ours.shape[1]:
        print(f"shape mismatch: ref {ref.shape}, ours {ours.shape}", file=sys.stderr)
        return 1
    if ours.shape[0] > ref.shape[0]:
        print(f"ours has {ours.shape[0]} rows, the reference only {ref.shape[0]}", file=sys.stderr)
        return 1
    if not np.isfinite(ours).all():
        bad = np.argwhere(~np.isfinite(ours))
        print(f"ours has {len(bad)} non-finite values, first at {tuple(bad[0])}", file=sys.stderr)
        return 1
    t = ours.shape[0]
    ref = ref[:t]

    lp_ref = log_softmax(ref)
    lp_ours = log_softmax(ours)
    kl = (np.exp(lp_ref) * (lp_ref - lp_ours)).sum(axis=-1)  # nats, per position
    a_ref = ref.argmax(axis=-1)
    a_ours = ours.argmax(axis=-1)
    agree = a_ref == a_ours
    top2 = np.sort(ref, axis=-1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    max_abs = np.abs(ref.astype(np.float64) - ours).max()

    print(f"positions compared : {t}")
    print(f"argmax agreement   : {agree.mean() * 100:.2f}% ({agree.sum()}/{t})")
    print(f"KL(ref||ours) mean : {kl.mean():.6g} nats")
    print(f"KL(ref||ours) max  : {kl.max():.6g} nats (position {int(kl.argmax())})")
    print(f"max |logit diff|   : {max_abs:.6g}")
    for i in np.argsort(-kl)[: args.worst]:
        print(f"  pos {int(i):4d}: KL {kl[i]:.6g}  argmax ref {a_ref[i]} ours {a_ours[i]}"
              f"  ref top-2 margin {margin[i]:.4g}")
    for i in np.flatnonzero(~agree):
        print(f"  disagreement at {int(i)}: ref {a_ref[i]} ours {a_ours[i]}, ref margin {margin[i]:.4g}")

    ok = True
    if args.max_kl is not None and kl.mean() > args.max_kl:
        ok = False
    if args.min_agreement is not None and agree.mean() * 100 < args.min_agreement:
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
