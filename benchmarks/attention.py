"""Attention over m key sources against its ideal: m x the time of one causal flash attention.

LAS's final layer (and SLA in concat mode) attends over keys gathered from m sources that hold the
same T positions, under the block-causal mask ``kv % T <= q``. Its ideal cost is m causal
attentions of one source each. This script times forward + backward of every backend in
``lit_vattn.model.attention`` (compiled, as they run inside a compiled model) against that ideal, and
checks each against the float32 oracle on the same inputs before timing it:

    python benchmarks/attention.py --out results/attention-h100.md

Timing: ``triton.testing.do_bench`` (CUDA events, median), inputs drawn at random once per shape,
a fixed random output gradient; the rows are ratios within one process on one GPU.
"""

from __future__ import annotations

import argparse
import datetime
import sys

import torch
from throughput import hardware

from lit_vattn.io import write_text
from lit_vattn.model import attention
from lit_vattn.provenance import git_commit


def bench(fn, reps_ms: int = 200) -> float:
    """Median milliseconds of fn() (CUDA events)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=50, rep=reps_ms, return_mode="median"))


def make_inputs(B, H, T, d, m, device, dtype, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    mk = lambda: torch.randn(B, H, T, d, device=device, dtype=dtype, generator=g).requires_grad_(True)  # noqa: E731
    return mk(), [mk() for _ in range(m)], [mk() for _ in range(m)]


def fwd_bwd(fn, q, ks, vs, gout):
    params = [q, *ks, *vs]

    def step():
        out = fn(q, ks, vs)
        torch.autograd.grad(out, params, gout)

    return step


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--shapes",
        default="32x12x1024x64,8x12x4096x64",
        help="comma-separated BxHxTxd (default: the d=768, H=12 model at T=1024 batch 32, and T=4096 batch 8)",
    )
    p.add_argument("--sources", default="2,3,6", help="numbers of key sources m (LAS at 12 layers reads 6)")
    p.add_argument("--backends", default="flex,merge,sdpa")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/attention.py times CUDA kernels: run it on a GPU")
    dev, dtype = torch.device("cuda"), torch.bfloat16
    backends = args.backends.split(",")
    # one compiled function per (backend, shape, m), each its own code object: a shared one would hit
    # Dynamo's recompile limit and silently run the later cases eagerly
    torch._dynamo.config.recompile_limit = max(64, getattr(torch._dynamo.config, "recompile_limit", 8))

    def compiled_fn(backend: str):
        if backend == "causal":

            def f(q, ks, vs):
                return attention.causal(q, ks[0], vs[0])
        else:

            def f(q, ks, vs):
                return attention.multi_source(q, ks, vs, backend)

        return torch.compile(f, dynamic=False)

    causal = compiled_fn("causal")
    rows = []
    for shape in args.shapes.split(","):
        B, H, T, d = (int(x) for x in shape.split("x"))
        q1, k1, v1 = make_inputs(B, H, T, d, 1, dev, dtype)
        g1 = torch.randn_like(q1)
        t_fwd1 = bench(lambda: causal(q1, k1, v1))
        t_fb1 = bench(fwd_bwd(causal, q1, k1, v1, g1))
        for m in (int(x) for x in args.sources.split(",")):
            q, ks, vs = make_inputs(B, H, T, d, m, dev, dtype, seed=m)
            gout = torch.randn_like(q)
            with torch.no_grad():  # checked on the first batch element: the oracle's dense scores are large
                ref = attention.oracle(q[:1], [k[:1] for k in ks], [v[:1] for v in vs])
            for b in backends:
                fn = compiled_fn(b)
                out = fn(q, ks, vs).detach()[:1].float()
                err = float((out - ref).norm() / ref.norm())
                del out
                if not err < 1e-2:
                    raise AssertionError(f"backend {b} at {shape}, m={m}: relative error {err:.2e} against the oracle")
                try:
                    t_f = bench(lambda: fn(q, ks, vs))
                    t_fb = bench(fwd_bwd(fn, q, ks, vs, gout))
                except torch.OutOfMemoryError:
                    rows.append((shape, m, b, err, None, None, None, None))
                    torch.cuda.empty_cache()
                    continue
                rows.append((shape, m, b, err, t_f, t_fb, t_f / (m * t_fwd1), t_fb / (m * t_fb1)))
                print(
                    f"{shape} m={m} {b}: fwd {t_f:.3f} ms ({t_f / (m * t_fwd1):.3f}x ideal), "
                    f"fwd+bwd {t_fb:.3f} ms ({t_fb / (m * t_fb1):.3f}x ideal), rel err {err:.1e}",
                    flush=True,
                )
        rows.append((shape, 1, "causal flash (ideal unit)", 0.0, t_fwd1, t_fb1, 1.0, 1.0))
        torch.cuda.empty_cache()

    f = lambda v, fmt: "OOM" if v is None else format(v, fmt)  # noqa: E731
    lines = [
        "# Attention over m key sources vs m causal flash attentions",
        "",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- commit: {git_commit()}, date: {datetime.date.today().isoformat()}",
        f"- hardware: {hardware()}",
        "- every backend compiled (`torch.compile`, as inside a compiled model), bf16, median of CUDA-event timings "
        "(`triton.testing.do_bench`); ideal = m x one causal flash attention of the same shape; "
        "rel. error = ||out - oracle|| / ||oracle|| (float32 oracle, explicit block-causal mask)",
        "",
        "| B x H x T x d | m | backend | rel. error | fwd (ms) | fwd+bwd (ms) | fwd / ideal | fwd+bwd / ideal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for shape, m, b, err, tf, tfb, rf, rfb in rows:
        lines.append(
            f"| {shape} | {m} | {b} | {err:.1e} | {f(tf, '.3f')} | {f(tfb, '.3f')} | {f(rf, '.3f')} | {f(rfb, '.3f')} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        write_text(args.out, table)


if __name__ == "__main__":
    main()
