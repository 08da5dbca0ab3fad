"""``lit-vattn-analyze``: what a trained checkpoint does across depth (PNG + CSV).

    lit-vattn-analyze depth-maps --ckpt_path runs/.../checkpoints/last.ckpt
    lit-vattn-analyze logit-lens --ckpt_path ...
    lit-vattn-analyze all --ckpt_path ... --batches 20 --out results/analysis/text-va
    lit-vattn-analyze positions --ckpt_path ... --seq_lens 128,256 --split test
    lit-vattn-analyze ablation --ckpt_path ...

- depth-maps: the maps the reader reports, averaged over validation batches: VA's L x (L+1)
  weights (per-token weights averaged for the query-key form; Kojima et al. report strong
  lower-to-upper links and sparse middle layers), LAS's attention mass of the final layer per
  source layer, SLA's routing and, in concat mode, each skip head's mass on the earlier K/V.
- logit-lens: the final norm + head applied to each state the network consumes (each block's
  input, then what the head reads; for VA the depth mixtures, not the unused residual states):
  next-token NLL per state and top-1 agreement with the model's output (VA's paper reports that
  prediction is postponed to the final layer).
- ablation: validation NLL with each source removed in turn (LAS: one feature source, or its own
  K/V; SLA: one skip block's skip heads back on their own K/V) and all at once, against the intact
  model on the same batches: use measured by removal, not by attention mass. LAS's depth maps also
  give each source's share of the attention output's norm.
- positions: next-token NLL by position 1..T over every window of a split (test by default), at
  the trained length and at longer ones (RoPE extrapolated past ``max_seq_len``; nothing else in
  the model depends on T): where in the context a method's gain sits, and whether it holds beyond
  the training length (SLA's long-context claim). Not part of ``all``: it scores a whole split.
The run's ``config.yaml`` (next to ``checkpoints/``) rebuilds the model and its data.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from lit_vattn.plotting import plt as pyplot
from lit_vattn.plotting import save_csv, savefig
from lit_vattn.tools.loader import load


def _batches(dm, n: int):
    for i, b in enumerate(dm.val_dataloader()):
        if i >= n:
            return
        yield b


@torch.no_grad()
def map_values(model, dm, batches: int) -> dict:
    """Each map the reader reports (``Arch.depth_map``: name -> ``DepthMap``), with per-token
    statistics recorded over ``batches`` validation batches; {} for a reader without depth memory."""
    net, arch = model.net, model.net.arch
    arch.reset_maps()
    arch.record_maps = True
    try:
        for b in _batches(dm, batches):
            net(b["input"])
    finally:
        arch.record_maps = False
    return arch.depth_map()


def depth_maps(model, dm, batches: int, out: Path, title: str) -> list[Path]:
    """``map_values`` drawn and saved: a heatmap for a matrix, bars for a single row."""
    maps = map_values(model, dm, batches)
    if not maps:
        print(f"{type(model.net.arch).__name__} reads no depth memory: no depth map")
        return []
    plt = pyplot()
    written = []
    for name, dmap in maps.items():
        m = dmap.values.float().numpy()
        path, table = out / f"depth_{name}.png", out / f"depth_{name}.csv"
        save_csv(table, ["row"] + dmap.cols, [[dmap.rows[r]] + [f"{v:.6f}" for v in m[r]] for r in range(m.shape[0])])
        if m.shape[0] == 1:  # one row: bars per source
            fig, ax = plt.subplots(figsize=(1.5 + 0.5 * m.shape[1], 3.2))
            ax.bar(dmap.cols, m[0])
            ax.set_ylabel(dmap.what)
            ax.set_xlabel(f"source ({dmap.rows[0]})")
        else:
            rows, cols = m.shape
            fig, ax = plt.subplots(figsize=(1.2 + 0.45 * cols, 1.0 + 0.4 * rows))
            im = ax.imshow(m, cmap="viridis", vmin=0, vmax=max(1e-6, float(m.max())))
            ax.set_xticks(range(cols), dmap.cols, rotation=90, fontsize=7)
            ax.set_yticks(range(rows), dmap.rows, fontsize=7)
            fig.colorbar(im, ax=ax, fraction=0.046, label=dmap.what)
        ax.set_title(f"{title}: {name}", fontsize=9)
        fig.tight_layout()
        savefig(fig, path)
        plt.close(fig)
        written += [path, table]
    return written


@torch.no_grad()
def lens_values(model, dm, batches: int) -> tuple[list[str], np.ndarray, np.ndarray, int]:
    """The final norm + head applied to each state the network consumes (``Arch.lens_states``:
    each block's residual input, then the readout), scored against the next token over ``batches``
    validation batches: (state names, NLL per token, top-1 agreement with the output, tokens)."""
    net = model.net
    V = net.vocab_size
    nll, agree, labels, n = None, None, None, 0
    for b in _batches(dm, batches):
        y = b["target"]
        valid = y >= 0
        final, mem = net.hidden_states(b["input"], return_memory=True)
        states = net.arch.lens_states(mem, final)
        labels = [name for name, _ in states]
        top_final = net.head(net.norm(final))[..., :V].argmax(-1)
        rows_nll, rows_agree = [], []
        for _, h in states:
            logits = net.head(net.norm(h))[..., :V].float()
            rows_nll.append(
                F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum").item()
            )
            rows_agree.append(((logits.argmax(-1) == top_final) & valid).sum().item())
        nll = np.array(rows_nll) if nll is None else nll + rows_nll
        agree = np.array(rows_agree) if agree is None else agree + rows_agree
        n += valid.sum().item()
    return labels, nll / max(n, 1), agree / max(n, 1), n


def logit_lens(model, dm, batches: int, out: Path, title: str) -> list[Path]:
    """``lens_values`` drawn and saved."""
    labels, nll, agree, n = lens_values(model, dm, batches)
    save_csv(
        out / "logit_lens.csv",
        ["state", "nll", "top1_agreement_with_output"],
        [[s, f"{a:.6f}", f"{g:.6f}"] for s, a, g in zip(labels, nll, agree)],
    )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(labels, nll, "o-", label="next-token NLL (nats)")
    ax.set_ylabel("NLL (nats/token)")
    ax.set_xlabel("state consumed (in<l> = block l's input)")
    ax2 = ax.twinx()
    ax2.plot(labels, agree, "s--", color="tab:orange", label="top-1 = output's")
    ax2.set_ylabel("top-1 agreement with the output")
    ax2.set_ylim(0, 1.02)
    ax.set_title(f"{title}: logit lens ({n:,} tokens)", fontsize=9)
    ax.tick_params(axis="x", labelsize=7)
    fig.legend(loc="lower center", ncol=2, fontsize=7)
    fig.tight_layout(rect=(0, 0.07, 1, 1))  # keep the legend clear of the title and the curves
    savefig(fig, out / "logit_lens.png")
    plt.close(fig)
    return [out / "logit_lens.png", out / "logit_lens.csv"]


@torch.no_grad()
def _val_nll(model, dm, batches: int) -> tuple[float, int]:
    total, n = 0.0, 0
    for b in _batches(dm, batches):
        nll, count = model._nll_sum(b)
        total, n = total + float(nll), n + int(count)
    return total / max(n, 1), n


@torch.no_grad()
def ablation(model, dm, batches: int, out: Path, title: str) -> list[Path]:
    """Use measured by removal: the validation NLL with each of the reader's sources removed in
    turn (``Arch.ablation_units``: LAS's feature sources and its own K/V; SLA's skip blocks, whose
    skip heads then read their own K/V), and with all of them removed where that leaves a model,
    against the intact model on the same batches. A large NLL increase = a source the trained
    network uses; attention mass alone does not say that."""
    arch = model.net.arch
    units = arch.ablation_units()
    if not units:
        return []
    base, n = _val_nll(model, dm, batches)
    rows = [["none", f"{base:.6f}", "0.000000"]]
    sets = [frozenset([u]) for u in units]
    try:  # every source at once, where the reader allows it (LAS keeps at least one)
        arch.ablate(frozenset(units))
        sets.append(frozenset(units))
    except ValueError:
        pass
    for u in sets:
        arch.ablate(u)
        try:
            nll, _ = _val_nll(model, dm, batches)
        finally:
            arch.ablate(frozenset())
        rows.append(
            [
                "+".join(sorted(u)) if len(u) < len(units) or len(units) == 1 else "all",
                f"{nll:.6f}",
                f"{nll - base:.6f}",
            ]
        )
    save_csv(out / "ablation.csv", ["removed", "nll", "delta_nll"], rows)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.bar([r[0] for r in rows[1:]], [float(r[2]) for r in rows[1:]], color="tab:red")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("Δ validation NLL when removed (nats/token)")
    ax.set_title(f"{title}: ablation ({n:,} tokens; intact {base:.4f})", fontsize=9)
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    savefig(fig, out / "ablation.png")
    plt.close(fig)
    return [out / "ablation.png", out / "ablation.csv"]


def extend_context(net, T: int) -> None:
    """Let ``net`` (a ``GPT``) run sequences of T tokens: a longer RoPE table and ``max_seq_len``.
    RoPE is the only part of the model whose size depends on T, so this is extrapolation of the
    trained model, not a change of it; it never shortens the table."""
    from lit_vattn.model.rope import rope_table

    if T <= net.cfg.max_seq_len:
        return
    net.cfg = dataclasses.replace(net.cfg, max_seq_len=T)
    cos, sin = rope_table(T, net.cfg.head_dim, net.cfg.rope_theta, device=net.rope_cos.device)
    net.rope_cos, net.rope_sin = cos, sin


@torch.no_grad()
def position_nll(
    model, dm, seq_len: int, split: str = "test", max_windows: Optional[int] = None
) -> tuple[np.ndarray, np.ndarray]:
    """Summed next-token NLL (nats) and scored-target count at each position 0..T-1 of the windows
    that score every target of ``split`` once (``EvalWindows``, stride T; the first
    ``max_windows`` of them when given, the ones a run with ``limit_test_batches`` scored); position
    t predicts its target from t + 1 tokens of context. Returns float64 (T,) and int64 (T,) arrays."""
    from torch.utils.data import DataLoader, Subset

    from datamodules.windows import EvalWindows

    if split not in dm._data:
        raise ValueError(f"no split {split!r} in the data (--split: one of {sorted(dm._data)})")
    net = model.net
    extend_context(net, seq_len)
    windows = EvalWindows(dm._data[split], seq_len)
    if max_windows is not None:
        windows = Subset(windows, range(min(max_windows, len(windows))))
    loader = DataLoader(windows, batch_size=dm.batch_size)
    nll, count = np.zeros(seq_len), np.zeros(seq_len, dtype=np.int64)
    for b in loader:
        x, y = b["input"], b["target"]  # (B, T) each
        logits = net(x).float()  # (B, T, V)
        per = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="none").view(y.shape)
        valid = y >= 0
        nll += per.double().sum(0).numpy()  # ignored targets contribute 0
        count += valid.sum(0).numpy()
    return nll, count


def positions(
    model, dm, seq_lens: list[int], split: str, out: Path, title: str, max_windows: Optional[int] = None
) -> list[Path]:
    """``position_nll`` at each length in ``seq_lens``: CSV (seq_len, position, nll, tokens) and a
    plot of NLL against position (log x), the trained length marked."""
    trained = dm.seq_len  # the windows the model was trained on
    rows, curves = [], {}
    for T in seq_lens:
        nll, count = position_nll(model, dm, T, split, max_windows)
        curves[T] = nll / np.maximum(count, 1)
        rows += [[T, t + 1, f"{curves[T][t]:.6f}", int(count[t])] for t in range(T)]
    save_csv(out / "positions.csv", ["seq_len", "position", "nll", "tokens"], rows)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for T, c in curves.items():
        ax.plot(np.arange(1, T + 1), c, lw=1, label=f"windows of {T}")
    ax.axvline(trained, color="grey", ls="--", lw=0.8, label=f"trained length {trained}")
    ax.set_xscale("log")
    ax.set_xlabel("position (tokens of context)")
    ax.set_ylabel(f"{split} NLL (nats/token)")
    ax.set_title(f"{title}: NLL by position", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    savefig(fig, out / "positions.png")
    plt.close(fig)
    return [out / "positions.png", out / "positions.csv"]


def main(argv: Optional[list[str]] = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["depth-maps", "logit-lens", "ablation", "all", "positions"])
    p.add_argument("--ckpt_path", required=True)
    p.add_argument("--config", default=None, help="the run's YAML; default <run>/config.yaml")
    p.add_argument("--batches", type=int, default=20, help="validation batches averaged over")
    p.add_argument("--out", default=None, help="output folder; default <run>/analysis")
    p.add_argument("--title", default=None)
    p.add_argument(
        "--seq_lens",
        default=None,
        help="positions: comma-separated window lengths; default the trained length and twice it",
    )
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="positions: the split scored")
    p.add_argument(
        "--max_windows",
        type=int,
        default=None,
        help="positions: score only the first N windows of each length (a quick look); default all",
    )
    args = p.parse_args(argv)
    if args.max_windows is not None and args.max_windows < 1:
        raise SystemExit(f"--max_windows {args.max_windows}: must be >= 1 (leave it out to score every window)")
    seq_lens = None
    if args.seq_lens:
        try:
            seq_lens = [int(x) for x in args.seq_lens.split(",")]
        except ValueError:
            raise SystemExit(f"--seq_lens {args.seq_lens!r}: comma-separated integers, e.g. 128,256") from None
        if min(seq_lens) < 1:
            raise SystemExit(f"--seq_lens {args.seq_lens!r}: lengths must be >= 1")
    model, dm = load(args.ckpt_path, args.config)
    out = Path(args.out) if args.out else Path(args.ckpt_path).parent.parent / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    title = args.title or type(model.net.arch).__name__
    written = []
    if args.what in ("depth-maps", "all"):
        written += depth_maps(model, dm, args.batches, out, title)
    if args.what in ("logit-lens", "all"):
        written += logit_lens(model, dm, args.batches, out, title)
    if args.what in ("ablation", "all"):
        found = ablation(model, dm, args.batches, out, title)
        if not found and args.what == "ablation":
            raise SystemExit(f"{type(model.net.arch).__name__} has no separable sources to ablate (LAS and SLA have)")
        written += found
    if args.what == "positions":
        written += positions(
            model, dm, seq_lens or [dm.seq_len, 2 * dm.seq_len], args.split, out, title, args.max_windows
        )
    for w in written:
        print(w)
    return written


def console() -> None:
    """The console script: ``main`` returns its results for Python callers, and a returned object
    would become the process's exit status."""
    main()


if __name__ == "__main__":
    console()
