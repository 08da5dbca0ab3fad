"""Loss by position: every method's test NLL at each position of the context, at the trained
length and beyond it, paired against vanilla on the same seeds.

For every (architecture, seed) run of one ``lit-vattn-reproduce`` table (``--runs`` holds
``<arch>/seed<s>/fit/checkpoints/last.ckpt``; for a table with per-method learning rates,
``--lrs-from`` its CSV picks ``<arch>/lr<lr>/seed<s>``, the runs that table scored),
``lit_vattn.tools.analyze.position_nll`` scores every
window of the test split at each length of ``--seq-lens`` (default: the trained length T and 2T;
past T, RoPE is extrapolated, the only part of these models whose size depends on T). Per run the
sums are cached in ``<run>/positions.json`` (keyed by the checkpoint's size and mtime), so an
interrupted invocation resumes.

Check: at the trained length the token-weighted mean over positions is the run's own test NLL
(its per-window NLLs in ``test/summary.json``); the table states the largest disagreement, so a
wrong window, mask or RoPE table cannot pass silently.

Outputs (``--out`` stem): ``.md`` (per position bucket: vanilla's NLL, each method's paired
difference to vanilla, mean ± std over seeds, paired t over seeds Holm-corrected across the
methods of that bucket, verdict), ``.csv`` (per arch, length and position: mean and std over seeds
of the NLL, tokens scored) and ``.png`` (NLL by position at the longest length; difference to
vanilla by bucket).

    python -m lit_vattn.experiments.positions_table --runs runs/reproduce/text-tiny --out results/positions-text-tiny
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import sys
from pathlib import Path
from statistics import mean, stdev

import numpy as np

from lit_vattn.arch.registry import default_request
from lit_vattn.experiments import stats
from lit_vattn.experiments.curves import method_style
from lit_vattn.experiments.records import DONE, SUMMARY, TEST, RunRecord
from lit_vattn.io import write_json, write_text
from lit_vattn.plotting import plt as pyplot
from lit_vattn.plotting import save_csv, savefig
from lit_vattn.provenance import git_commit, hardware
from lit_vattn.tools.loader import load


def buckets(T: int, longest: int) -> list[tuple[int, int]]:
    """Position ranges (1-based, inclusive): the first 8 tokens, up to T/4, up to T, then T+1..longest
    when the longest length exceeds the trained one."""
    out = [(1, min(8, T))]
    if T // 4 > 8:
        out.append((9, T // 4))
    if T > out[-1][1]:
        out.append((out[-1][1] + 1, T))
    if longest > T:
        out.append((T + 1, longest))
    return out


def run_positions(run: Path, seq_lens: list[int], split: str, max_windows=None) -> dict:
    """{seq_len: (nll sums, token counts)} for one run, from its cache or computed (and cached)."""
    from lit_vattn.tools import analyze

    ckpt = RunRecord(run).checkpoint
    if not ckpt.is_file():
        raise SystemExit(f"{run}: no checkpoint {ckpt} (--runs must hold the checkpoints of a reproduce table)")
    st = ckpt.stat()
    key = {"ckpt_size": st.st_size, "ckpt_mtime": st.st_mtime, "split": split, "max_windows": max_windows}
    cache = run / "positions.json"
    saved = json.loads(cache.read_text()) if cache.is_file() else {}
    if saved.get("key") != key:
        saved = {"key": key, "lengths": {}}
    missing = [T for T in seq_lens if str(T) not in saved["lengths"]]
    if missing:
        model, dm = load(str(ckpt))
        for T in missing:
            nll, count = analyze.position_nll(model, dm, T, split, max_windows)
            saved["lengths"][str(T)] = {"nll": nll.tolist(), "tokens": count.tolist()}
        write_json(cache, saved, indent=None)
    return saved


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="one table's run folder, e.g. runs/reproduce/text-tiny")
    p.add_argument(
        "--archs",
        default=None,
        help="comma-separated; default every architecture of the reproduce default with a run folder here",
    )
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument(
        "--seq-lens", default=None, help="comma-separated window lengths; default T and 2T (T = trained length)"
    )
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument(
        "--max-windows",
        type=int,
        default=None,
        help="score only the first N windows of each length (a quick look); default every window of the split",
    )
    p.add_argument("--out", required=True, help="output stem, e.g. results/positions-text-tiny")
    p.add_argument(
        "--lrs-from",
        default=None,
        help="the CSV of a table made with --lrs (e.g. results/music-tiny.csv): "
        "each (arch, seed) is read from <arch>/lr<its lr>/seed<s>, the run that table scored",
    )
    args = p.parse_args(argv)
    runs = Path(args.runs)
    seeds = [int(s) for s in args.seeds.split(",")]
    lrs = {}
    if args.lrs_from:  # the lr each (arch, seed) of that table trained at
        try:
            with open(args.lrs_from, newline="") as f:
                lrs = {(r["arch"], int(r["seed"])): float(r["lr"]) for r in csv.DictReader(f) if r.get("lr")}
        except (OSError, KeyError, ValueError) as e:
            raise SystemExit(
                f"--lrs-from {args.lrs_from}: not a reproduce table CSV with arch, seed and lr columns ({e})"
            ) from None

    def run_dir(a: str, s: int) -> Path:
        if not lrs:
            return runs / a / f"seed{s}"
        if (a, s) not in lrs:
            raise SystemExit(
                f"--lrs-from {args.lrs_from} has no run of {a} seed {s}: leave it out with --archs / --seeds"
            )
        return runs / a / f"lr{lrs[a, s]:g}" / f"seed{s}"

    have = {a for a, _ in lrs} if lrs else {a for a in default_request() if (runs / a).is_dir()}
    archs = args.archs.split(",") if args.archs else [a for a in default_request() if a in have]
    if "vanilla" not in archs:
        raise SystemExit("--archs must include vanilla: every method is paired against it")
    archs = ["vanilla"] + [a for a in archs if a != "vanilla"]  # first: rows, colours and pairing read it so
    for a in archs:
        for s in seeds:
            if not RunRecord(run_dir(a, s)).is_done:
                raise SystemExit(
                    f"{run_dir(a, s)}: no finished run ({DONE}); run lit-vattn-reproduce "
                    f"first or leave it out with --archs / --seeds"
                )
    from lit_vattn.train.cli import from_run_config

    T = from_run_config(RunRecord(run_dir("vanilla", seeds[0])).config_path).datamodule.seq_len  # trained length
    try:
        seq_lens = sorted({int(x) for x in args.seq_lens.split(",")}) if args.seq_lens else [T, 2 * T]
    except ValueError:
        raise SystemExit(f"--seq-lens {args.seq_lens!r}: comma-separated integers, e.g. {T},{2 * T}") from None
    if args.max_windows is not None and args.max_windows < 1:
        raise SystemExit(f"--max-windows {args.max_windows}: must be >= 1 (leave it out to score every window)")
    if min(seq_lens) < 1 or max(seq_lens) < T:
        raise SystemExit(f"--seq-lens {args.seq_lens!r}: lengths >= 1, the longest >= the trained length {T}")
    data: dict[str, dict[int, dict]] = {}
    for a in archs:
        data[a] = {}
        for s in seeds:
            saved = run_positions(run_dir(a, s), seq_lens, args.split, args.max_windows)
            data[a][s] = {int(k): (np.asarray(v["nll"]), np.asarray(v["tokens"])) for k, v in saved["lengths"].items()}
            print(f"[positions] {a} seed {s}", flush=True)
    longest = max(seq_lens)

    # check: at T the curve sums to the run's own per-window test NLLs (test/summary.json) over the
    # same windows (the first N by position in the split; a run with limit_test_batches < 1 scored a prefix)
    check, unchecked = None, 0
    if T in seq_lens and args.split == "test":
        for a in archs:
            for s in seeds:
                nll, tok = data[a][s][T]
                w = RunRecord.at(run_dir(a, s)).test_summary.get("test_windows") or {}
                ref, got = 0.0, 0
                for _, wn, wt in sorted(zip(w.get("index", []), w.get("nll", []), w.get("tokens", []))):
                    if got >= tok.sum():  # the run's windows, in order, until they cover what we scored
                        break
                    ref, got = ref + wn, got + wt
                if got != tok.sum():
                    unchecked += 1
                    continue
                check = max(check or 0.0, abs(nll.sum() / tok.sum() - ref / got))

    # per position: mean/std over seeds of the per-position NLL
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for a in archs:
        for L in seq_lens:
            per = np.stack([data[a][s][L][0] / np.maximum(data[a][s][L][1], 1) for s in seeds])  # (S, L)
            sd = per.std(0, ddof=1) if len(seeds) > 1 else np.zeros(L)
            tok = data[a][seeds[0]][L][1]
            rows += [[a, L, t + 1, f"{per[:, t].mean():.6f}", f"{sd[t]:.6f}", int(tok[t])] for t in range(L)]
    save_csv(out.with_suffix(".csv"), ["arch", "seq_len", "position", "nll_mean", "nll_std", "tokens"], rows)

    # per bucket of the longest length: paired differences to vanilla over seeds
    bks = buckets(T, longest)

    def bucket_nll(a: str, s: int, lo: int, hi: int) -> float:
        nll, tok = data[a][s][longest]
        return float(nll[lo - 1 : hi].sum() / max(tok[lo - 1 : hi].sum(), 1))

    cells: dict[str, list[str]] = {a: [] for a in archs}
    others = archs[1:]  # archs[0] is vanilla
    for lo, hi in bks:
        base = [bucket_nll("vanilla", s, lo, hi) for s in seeds]
        cells["vanilla"].append(f"{mean(base):.4f}" + (f" ± {stdev(base):.4f}" if len(seeds) > 1 else ""))
        diffs = {a: [bucket_nll(a, s, lo, hi) - b for s, b in zip(seeds, base)] for a in others}
        holm = stats.holm([stats.paired_t(diffs[a])[1] for a in others])
        for a, p_h in zip(others, holm):
            d = diffs[a]
            sd = f" ± {stdev(d):.4f}" if len(d) > 1 else ""
            word = stats.verdict(mean(d), p_h).replace("no detectable difference", "n.d.")
            cells[a].append(f"{mean(d):+.4f}{sd} (p {p_h:.3f}) {word}" if p_h is not None else f"{mean(d):+.4f}{sd}")

    cmd = "python -m lit_vattn.experiments.positions_table " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"# NLL by position: `{runs}`",
        "",
        f"- command: `{cmd}`",
        f"- commit: {git_commit()} (table); checkpoints: `{runs}/<arch>/{'lr<lr>/' if lrs else ''}seed<s>/fit/checkpoints/last.ckpt` "
        + (f"(each method's lr from `{args.lrs_from}`) " if lrs else "")
        + f"(commits in their {DONE}); date: {datetime.date.today().isoformat()}; hardware: "
        f"{hardware()} for this scoring",
        f"- scored: every target of the {args.split} split once"
        + (f" (the first {args.max_windows} windows of each length only)" if args.max_windows else "")
        + f", in windows of {', '.join(map(str, seq_lens))} tokens "
        f"(stride = length); trained length T = {T}; past T the RoPE table is extrapolated",
        (
            f"- check: at T the token-weighted mean over positions equals the run's own test NLL (its per-window "
            f"NLLs in {TEST}/{SUMMARY}) within {check:.2e} nats"
            if check is not None
            else "- check: not made"
        )
        + (f"; {unchecked} run(s) not checked: they scored fewer test windows than this table" if unchecked else ""),
        f"- buckets: positions of windows of {longest} tokens; vanilla row: its NLL (nats/token), mean ± std over "
        f"seeds {seeds}; other rows: paired difference to vanilla on the same seed (negative = lower NLL), "
        f"two-sided paired t over seeds, Holm-corrected across the {len(archs) - 1} methods of each bucket; "
        f'"better"/"worse" when that p < 0.05, else n.d. = no detectable difference at this scale '
        f"(the seed test only: no bootstrap over windows here)",
        "",
        "| arch | " + " | ".join(f"positions {lo}-{hi}" for lo, hi in bks) + " |",
        "|---|" + "---|" * len(bks),
    ]
    lines += [f"| {a} | " + " | ".join(cells[a]) + " |" for a in archs]
    text = "\n".join(lines) + "\n"
    write_text(out.with_suffix(".md"), text)
    plot(out.with_suffix(".png"), data, archs, seeds, longest, T, bks, bucket_nll, str(runs))
    print(text)
    return text


def plot(path: Path, data, archs, seeds, L: int, T: int, bks, bucket_nll, title: str) -> None:
    plt = pyplot()
    edges = np.unique(np.round(np.geomspace(1, L + 1, 24)).astype(int))  # log-spaced position bins
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2))
    styles = [method_style(i, plt) for i in range(len(archs))]
    for a, style in zip(archs, styles):
        nll = sum(data[a][s][L][0] for s in seeds)
        tok = sum(data[a][s][L][1] for s in seeds)
        xs, ys = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            if tok[lo - 1 : hi - 1].sum():
                xs.append(np.sqrt(lo * (hi - 1)) if hi - 1 > lo else lo)
                ys.append(nll[lo - 1 : hi - 1].sum() / tok[lo - 1 : hi - 1].sum())
        ax.plot(xs, ys, "-", lw=1.2 if a != "vanilla" else 2.2, label=a, **style)
    ax.axvline(T, color="grey", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"position (tokens of context), windows of {L}; dashed: trained length {T}")
    ax.set_ylabel("NLL (nats/token), pooled over seeds")
    ax.legend(fontsize=6, ncol=2)
    labels = [f"{lo}-{hi}" for lo, hi in bks]
    others = [a for a in archs if a != "vanilla"]
    width = 0.8 / max(len(others), 1)
    for i, (a, style) in enumerate(zip(others, styles[1:])):
        d = np.array([[bucket_nll(a, s, lo, hi) - bucket_nll("vanilla", s, lo, hi) for s in seeds] for lo, hi in bks])
        err = d.std(1, ddof=1) if len(seeds) > 1 else None
        bx.bar(
            np.arange(len(bks)) + (i - len(others) / 2 + 0.5) * width,
            d.mean(1),
            width,
            yerr=err,
            color=style["color"],
            label=a,
        )
    bx.axhline(0, color="black", lw=0.6)
    bx.set_xticks(range(len(bks)), labels)
    bx.set_xlabel("positions")
    bx.set_ylabel("Δ NLL vs vanilla (same seed), mean ± std")
    fig.suptitle(f"NLL by position: {title}", fontsize=10)
    fig.tight_layout()
    savefig(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    main()
