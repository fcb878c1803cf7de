#!/usr/bin/env python3
"""retort vs llama.cpp, side by side: the same GGUF files, the same thread counts, runs
alternating (llama-bench, retort bench, llama-bench, ...) so that machine noise hits both
alike. Prints medians of pp (prompt processing) and tg (generation) tokens/s and the
ratios retort / llama.cpp.

    python3 scripts/bench_vs_llama.py MODEL.gguf [MODEL.gguf ...] [--threads 1,2] [--rounds 5] [-p 512] [-n 128]

llama.cpp's tools come from ../shared/tools/llama-peer.sh (built once, cached); retort from
target/release/retort (built here if missing).
"""
import argparse, json, os, statistics, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peer_env():
    script = ROOT.parent / "shared" / "tools" / "llama-peer.sh"
    out = subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True).stdout
    env = {}
    for line in out.splitlines():
        line = line.removeprefix("export ")
        if "=" in line:
            k, v = line.split("=", 1)
            env[k] = v
    return env


def llama_bench(bench, model, threads, p, n):
    out = subprocess.run([bench, "-m", model, "-t", str(threads), "-p", str(p), "-n", str(n), "-r", "1", "-o", "json"],
                         check=True, capture_output=True, text=True).stdout
    rows = json.loads(out)
    pp = next(r["avg_ts"] for r in rows if r["n_prompt"] == p and r["n_gen"] == 0)
    tg = next(r["avg_ts"] for r in rows if r["n_gen"] == n and r["n_prompt"] == 0)
    return pp, tg


def retort_bench(retort, model, threads, p, n):
    out = subprocess.run([retort, "bench", model, "-t", str(threads), "-p", str(p), "-n", str(n), "-r", "1", "--json"],
                         check=True, capture_output=True, text=True).stdout
    doc = json.loads(out)
    return doc["pp_tps"], doc["tg_tps"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    args = ap.parse_args()
    env = peer_env()
    retort = ROOT / "target" / "release" / "retort"
    if not retort.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "retort-runtime", "--bin", "retort"], cwd=ROOT, check=True)
    print(f"| model | threads | llama.cpp pp{args.p} | retort pp{args.p} | ratio | llama.cpp tg{args.n} | retort tg{args.n} | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for model in args.models:
        for t in map(int, args.threads.split(",")):
            theirs, ours = [], []
            for _ in range(args.rounds):
                theirs.append(llama_bench(env["LLAMA_BENCH"], model, t, args.p, args.n))
                ours.append(retort_bench(str(retort), model, t, args.p, args.n))
            med = lambda xs, i: statistics.median(x[i] for x in xs)
            lp, rp, lt, rt = med(theirs, 0), med(ours, 0), med(theirs, 1), med(ours, 1)
            print(f"| {Path(model).name} | {t} | {lp:.1f} | {rp:.1f} | {rp / lp:.2f} | {lt:.1f} | {rt:.1f} | {rt / lt:.2f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
