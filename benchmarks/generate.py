"""Generation speed per method: tokens/s with the KV cache and with the whole context recomputed.

    python benchmarks/generate.py --out results/generate-cpu.md
    python benchmarks/generate.py --d-model 768 --n-layer 12 --n-head 12 --seq-len 1024 --out results/generate-h100.md

Each method is the model ``lit_vattn.tools.generate.sample`` draws from (random init: speed does not
depend on the weights), at the shape given (default: the tiny preset's text model, vocabulary 8192),
drawing ``--n`` samples of ``--new-tokens`` tokens from a ``--prompt``-token prompt; every step
samples with temperature 1. When a sequence reaches the context the context restarts from its last
half (as in ``lit-vattn-generate``), so ``--new-tokens`` beyond the context includes re-encodings.
Each row first checks that cached and recomputed sampling draw the same tokens, then times each
(best of ``--repeats``, taken round robin over all cells). Wall time of the whole sampling loop, prompt encoding included.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time

import torch
from throughput import hardware

from lit_vattn import GPT, GPTConfig
from lit_vattn.arch.registry import registry
from lit_vattn.io import write_text
from lit_vattn.provenance import git_commit
from lit_vattn.tools.generate import sample


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--archs", default=",".join(registry()), help="comma-separated short names (lit_vattn.arch.registry)"
    )
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128, help="the model's context (max_seq_len)")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--n", type=int, default=4, help="samples drawn at once (the batch)")
    p.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = [a for a in args.archs.split(",") if a]
    unknown = [a for a in names if a not in registry()]
    if unknown:
        raise SystemExit(f"--archs: unknown {unknown}; choose from {', '.join(registry())}")
    cfg = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, d_model=args.d_model, max_seq_len=args.seq_len)
    prompt = torch.randint(0, args.vocab, (args.prompt,), generator=torch.Generator().manual_seed(0)).tolist()
    kw = dict(n=args.n, max_new_tokens=args.new_tokens, seed=0)
    nets, same = {}, {}
    for name in names:
        torch.manual_seed(0)
        nets[name] = net = GPT(cfg, args.vocab, registry()[name]()).to(device).eval()
        same[name] = sample(net, prompt, use_cache=True, **kw) == sample(net, prompt, use_cache=False, **kw)
    best = {(name, cached): float("inf") for name in names for cached in (True, False)}
    for _ in range(args.repeats):  # round robin, so that drift in the machine's speed spreads over every cell
        for name, cached in best:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            sample(nets[name], prompt, use_cache=cached, **kw)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name, cached] = min(best[name, cached], time.perf_counter() - t0)
    rows = [
        (name, args.n * args.new_tokens / best[name, True], args.n * args.new_tokens / best[name, False], same[name])
        for name in names
    ]
    for name, c, r, ok in rows:
        print(f"{name}: cached {c:.0f} tok/s, recomputed {r:.0f} tok/s, same tokens {ok}", flush=True)
    base = dict((r[0], r[1]) for r in rows).get("vanilla")
    lines = [
        f"# Generation speed ({device.type})",
        "",
        f"- command: `python benchmarks/generate.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"- commit: {git_commit()}, date: {datetime.date.today().isoformat()}",
        f"- hardware: {hardware()}",
        f"- shape: d={args.d_model}, L={args.n_layer}, H={args.n_head}, context {args.seq_len}, vocabulary {args.vocab}, "
        f"float32, eager; {args.n} samples x {args.new_tokens} new tokens from a {args.prompt}-token prompt "
        f"(the context restarts from its last half when full); best of {args.repeats}",
        "- cached: `lit_vattn.arch.base.KVCache` (exact for every reader: 'same tokens' = cached and recomputed "
        "sampling drew identical samples); recomputed: the whole context at every step (`--no_cache`)",
        "",
        "| arch | cached tok/s | recomputed tok/s | cache speed-up | cached vs vanilla | same tokens |",
        "|---|---|---|---|---|---|",
    ]
    for name, c, r, same in rows:
        lines.append(
            f"| {name} | {c:.0f} | {r:.0f} | {c / r:.2f}x | {c / base:.2f} |"
            if base
            else f"| {name} | {c:.0f} | {r:.0f} | {c / r:.2f}x | n/a |"
        )
        lines[-1] += f" {'yes' if same else 'NO'} |"
    text = "\n".join(lines) + "\n"
    if args.out:
        write_text(args.out, text)
    print(text)
    return text


if __name__ == "__main__":
    main()
