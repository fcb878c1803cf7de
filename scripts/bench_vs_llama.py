#!/usr/bin/env python3
"""retort vs llama.cpp, side by side: the same GGUF files, the same thread counts, runs
alternating (llama-bench, retort bench, llama-bench, ...) so that machine noise hits both
alike. Prints medians of pp (prompt processing) and tg (generation) tokens/s, the ratios
retort / llama.cpp, and the memory-bandwidth limit of generation: bytes of weights read per
token ÷ the machine's read bandwidth (`retort bandwidth` at the same thread count, measured
in every round next to the runs it bounds: the median over a cell's rounds, so a cell's limit
is the machine's bandwidth in the minutes the cell ran, not at the start of a long run).
Then model load time and peak RSS during generation for both.

    python3 scripts/bench_vs_llama.py                      # the issue's file set (made on first use)
    python3 scripts/bench_vs_llama.py A.gguf B.gguf --threads 1,2 --rounds 5 -p 512 -n 128

The default file set: SmolLM2-135M-Instruct Q4_1 (scripts/fetch-models.sh) and the Q8_0, Q4_0,
Q4_K_M and F16 files retort converts from it (via f32), plus a synthetic model shaped like
DeepSeek-R1-Distill-Qwen-1.5B (random weights, scripts/make_synthetic_checkpoint.py) at
q4_k_m and q8_0, whose weights do not fit in any cache. Made files go to models-cache/bench/;
RETORT_SYNTH_1_5B=DIR reuses a synthetic checkpoint folder made earlier.

llama.cpp's tools come from ../shared/tools/llama-peer.sh (built once, cached); retort from
target/release/retort (built here first, so the sources are what is measured).
"""
import argparse, json, os, re, statistics, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "models-cache"
BENCH = CACHE / "bench"
RETORT = ROOT / "target" / "release" / "retort"


def sh(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, **kw)


def peer_env():
    script = ROOT.parent / "shared" / "tools" / "llama-peer.sh"
    env = {}
    for line in sh(["bash", script]).stdout.splitlines():
        line = line.removeprefix("export ")
        if "=" in line:
            k, v = line.split("=", 1)
            env[k] = v
    return env


def convert(src, dst, out_type):
    if not dst.exists():
        print(f"making {dst.name} ...", file=sys.stderr, flush=True)
        sh([RETORT, "convert", src, "-o", dst, "--type", out_type])
    return dst


def default_files():
    BENCH.mkdir(parents=True, exist_ok=True)
    q4_1 = CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not q4_1.exists():
        sh(["bash", ROOT / "scripts" / "fetch-models.sh"])
    f32 = convert(q4_1, BENCH / "smollm2-f32.gguf", "f32")
    files = [q4_1] + [convert(f32, BENCH / f"smollm2-{t}.gguf", t) for t in ["q8_0", "q4_0", "q4_k_m", "f16"]]
    synth = Path(os.environ.get("RETORT_SYNTH_1_5B", BENCH / "r1-distill-qwen-1.5b-synthetic"))
    if not (synth / "config.json").exists():
        print(f"making the synthetic 1.5B checkpoint in {synth} ...", file=sys.stderr, flush=True)
        sh([sys.executable, ROOT / "scripts" / "make_synthetic_checkpoint.py", synth, "--shape", "r1-distill-qwen-1.5b"])
    files += [convert(synth, BENCH / f"r1-1.5b-synthetic-{t}.gguf", t) for t in ["q4_k_m", "q8_0"]]
    return files


def bytes_per_token(model):
    """Weight bytes a generation step reads: every tensor, except that of the token embedding
    only one row is read, unless it doubles as the output matrix (tied embeddings)."""
    doc = json.loads(sh([RETORT, "inspect", model, "--json"]).stdout)
    names = {t["name"] for t in doc["tensors"]}
    total = 0
    for t in doc["tensors"]:
        if t["name"] == "token_embd.weight" and "output.weight" in names:
            total += t["bytes"] // t["dims"][-1]
        else:
            total += t["bytes"]
    return total


def bandwidth(threads):
    """Bytes/s, best of 7 passes over 1 GiB (`retort bandwidth`)."""
    return json.loads(sh([RETORT, "bandwidth", "-t", threads]).stdout)["read_gb_s"] * 1e9


def llama_bench(bench, model, threads, p, n):
    rows = json.loads(sh([bench, "-m", model, "-t", threads, "-p", p, "-n", n, "-r", "1", "-o", "json"]).stdout)
    pp = next(r["avg_ts"] for r in rows if r["n_prompt"] == p and r["n_gen"] == 0)
    tg = next(r["avg_ts"] for r in rows if r["n_gen"] == n and r["n_prompt"] == 0)
    return pp, tg


def retort_bench(model, threads, p, n):
    doc = json.loads(sh([RETORT, "bench", model, "-t", threads, "-p", p, "-n", n, "-r", "1", "--json"]).stdout)
    return doc["pp_tps"], doc["tg_tps"]


def peak_rss_mib(cmd):
    out = subprocess.run(["/usr/bin/time", "-f", "%M"] + [str(c) for c in cmd], check=True, capture_output=True, text=True)
    return int(out.stderr.strip().splitlines()[-1]) / 1024


def load_ms(env, model, threads):
    ours = json.loads(sh([RETORT, "bench", model, "-t", threads, "-p", 0, "-n", 1, "-r", 1, "--json"]).stdout)["load_ms"]
    log = sh([env["LLAMA_SIMPLE"], "-m", model, "-n", 1, "Hello"]).stderr
    theirs = float(re.search(r"load time =\s*([0-9.]+) ms", log).group(1))
    return ours, theirs


def print_targets(results):
    """The issue's targets per cell: pp >= 1.2x; tg >= 1.2x, or >= 90% of the limit where 1.2x
    llama.cpp would pass the limit."""
    print()
    print("| model | threads | pp >= 1.2x | tg >= 1.2x (or >= 90% of the limit where 1.2x passes it) | median of the rounds' own ratios, pp / tg |")
    print("| --- | ---: | --- | --- | --- |")
    met = 0
    for r in results:
        pp_ratio, tg_ratio, share = r["retort_pp"] / r["llama_pp"], r["retort_tg"] / r["llama_tg"], r["retort_tg"] / r["limit_tg"]
        pp_met = pp_ratio >= 1.2
        tg_met = tg_ratio >= 1.2 or (1.2 * r["llama_tg"] > r["limit_tg"] and share >= 0.9)
        met += pp_met + tg_met
        verdict = lambda ok, text: ("met" if ok else "MISSED") + f" ({text})"
        # For reference: each round's llama.cpp and retort runs are seconds apart, so their
        # ratio cancels drift over the cell that the ratio of medians does not.
        paired = [statistics.median(o[i] / l[i] for l, o in zip(r["runs_llama"], r["runs_retort"])) for i in (0, 1)]
        print(f"| {r['model']} | {r['threads']} | {verdict(pp_met, f'{pp_ratio:.2f}')} | {verdict(tg_met, f'{tg_ratio:.2f}, {100 * share:.0f}%')} "
              f"| {paired[0]:.2f} / {paired[1]:.2f} |")
    print(f"\n{met} of {2 * len(results)} targets met")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", type=Path)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    args = ap.parse_args()
    env = peer_env()
    # Always: a binary left from older sources would be measured as if it were this commit.
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "retort-runtime", "--bin", "retort"], cwd=ROOT, check=True)
    models = args.models or default_files()
    threads = [int(t) for t in args.threads.split(",")]
    print(f"| model | MiB/token | threads | llama.cpp pp{args.p} | retort pp{args.p} | ratio | llama.cpp tg{args.n} | retort tg{args.n} | ratio | read GB/s | tg limit | llama.cpp % of limit | retort % of limit |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    results = []
    for model in models:
        per_token = bytes_per_token(model)
        for t in threads:
            theirs, ours, bws = [], [], []
            for _ in range(args.rounds):
                bws.append(bandwidth(t))
                theirs.append(llama_bench(env["LLAMA_BENCH"], model, t, args.p, args.n))
                ours.append(retort_bench(model, t, args.p, args.n))
            med = lambda xs, i: statistics.median(x[i] for x in xs)
            lp, rp, lt, rt = med(theirs, 0), med(ours, 0), med(theirs, 1), med(ours, 1)
            bw = statistics.median(bws)
            limit = bw / per_token
            results.append(dict(model=model.name, threads=t, llama_pp=lp, retort_pp=rp, llama_tg=lt, retort_tg=rt, limit_tg=limit,
                                bytes_per_token=per_token, runs_llama=theirs, runs_retort=ours, runs_bandwidth=bws))
            print(f"| {model.name} | {per_token / 2**20:.1f} | {t} | {lp:.1f} | {rp:.1f} | {rp / lp:.2f} | {lt:.1f} | {rt:.1f} | {rt / lt:.2f} "
                  f"| {bw / 1e9:.1f} | {limit:.1f} | {100 * lt / limit:.0f}% | {100 * rt / limit:.0f}% |", flush=True)
    print_targets(results)
    print()
    print(f"| model | threads | retort load ms | llama.cpp load ms | retort peak RSS MiB (tg{args.n}) | llama.cpp peak RSS MiB (tg{args.n}) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    t = max(threads)
    for model in models:
        ours_load, theirs_load = load_ms(env, model, t)
        ours_rss = peak_rss_mib([RETORT, "bench", model, "-t", t, "-p", 0, "-n", args.n, "-r", 1])
        theirs_rss = peak_rss_mib([env["LLAMA_BENCH"], "-m", model, "-t", t, "-p", 0, "-n", args.n, "-r", 1])
        results.append(dict(model=model.name, threads=t, retort_load_ms=ours_load, llama_load_ms=theirs_load,
                            retort_rss_mib=ours_rss, llama_rss_mib=theirs_rss))
        print(f"| {model.name} | {t} | {ours_load:.0f} | {theirs_load:.0f} | {ours_rss:.0f} | {theirs_rss:.0f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"results": results}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
