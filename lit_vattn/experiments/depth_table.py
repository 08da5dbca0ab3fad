"""Depth maps and logit lens over seeds: what a table's trained networks do across depth, with the
seed-to-seed spread and a paired test against vanilla, instead of one seed's picture.

For every (architecture, seed) of one ``lit-vattn-reproduce`` table (``--runs`` holds
``<arch>/[lr<lr>/]seed<s>/fit/checkpoints/last.ckpt``; for a tuned table the lr folder that holds
every seed, ``records.seed_runs``), ``lit_vattn.tools.analyze`` measures over ``--batches``
validation batches:

- the logit lens (``lens_values``): the final norm + head applied to each state the network
  consumes (``in<l>`` = block l's input; for VA the depth mixtures), its next-token NLL and its
  top-1 agreement with the model's output. The VA paper reports that prediction is "postponed" to
  the final layer: the last block's input agrees less with the output than vanilla's does. Each
  method's agreement and NLL at each state are paired with vanilla's at the same state and seed
  (mean, 95 % t interval over seeds, paired t Holm-corrected across the methods of that state).
- the depth maps (``map_values``): every map the reader reports (VA's weights per block and
  source, LAS's attention mass per source, SLA's skip heads' mass), cell by cell mean ± std over
  seeds, and how alike the seeds' maps are (the mean Pearson correlation between every two seeds'
  maps over the cells that differ between seeds: near 1, the pattern is the method's; near 0, it
  is one seed's). The VA paper describes its
  maps as strong lower-to-upper links and sparse middle layers; a pattern claimed from one seed
  holds only where the seeds agree.

Per run the values are cached in ``<run>/depth.json`` (keyed by the checkpoint's size and mtime
and the batches), so a second invocation, or one that was interrupted, rescores nothing it has.

Outputs (``--out`` stem): ``.md`` (the two tables), ``.json`` (every value per run: what the
tables are built from), ``.csv`` (lens per arch, state and seed) and ``.png`` (agreement and NLL by
state, mean ± std over seeds; each map's seed mean).

    python -m lit_vattn.experiments.depth_table --runs runs/reproduce/text-long --archs vanilla,va,va-frozen,sla,las \\
        --seeds 0,1,2 --out results/analysis/depth-text-long
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import sys
from pathlib import Path
from statistics import mean, stdev

import numpy as np

from lit_vattn.experiments import stats
from lit_vattn.experiments.curves import method_style
from lit_vattn.experiments.records import DONE, RunRecord, seed_runs
from lit_vattn.io import write_json, write_text
from lit_vattn.plotting import plt as pyplot
from lit_vattn.plotting import save_csv, savefig
from lit_vattn.provenance import git_commit, hardware


def run_values(run: RunRecord, batches: int) -> dict:
    """{"lens": {state, nll, agree, tokens}, "maps": {name: {values, rows, cols, what}}} of one run,
    from its cache or measured (and cached)."""
    from lit_vattn.tools import analyze
    from lit_vattn.tools.loader import load

    ckpt = run.checkpoint
    if not ckpt.is_file():
        raise SystemExit(f"{run.path}: no checkpoint {ckpt} (--runs must hold the checkpoints of a reproduce table)")
    st = ckpt.stat()
    key = {"ckpt_size": st.st_size, "ckpt_mtime": st.st_mtime, "batches": batches}
    cache = run.path / "depth.json"
    saved = json.loads(cache.read_text()) if cache.is_file() else {}
    if saved.get("key") == key:
        return saved
    model, dm = load(str(ckpt))
    states, nll, agree, n = analyze.lens_values(model, dm, batches)
    maps = analyze.map_values(model, dm, batches)
    saved = {
        "key": key,
        "lens": {"state": states, "nll": [float(x) for x in nll], "agree": [float(x) for x in agree], "tokens": n},
        "maps": {
            name: {"values": m.values.float().tolist(), "rows": m.rows, "cols": m.cols, "what": m.what}
            for name, m in maps.items()
        },
    }
    write_json(cache, saved, indent=None)
    return saved


def seed_agreement(mats: list[np.ndarray]) -> float | None:
    """Mean Pearson correlation between every two seeds' maps over the cells that differ between
    seeds: cells equal in every seed (a causal mask's zeros, a frozen map's init) would make any two
    maps look alike. None where fewer than two seeds or three such cells (two cells that sum to one,
    as a two-source softmax's, always correlate perfectly)."""
    stack = np.stack([m.ravel() for m in mats])  # (seeds, cells)
    moved = np.ptp(stack, axis=0) > 0
    if len(mats) < 2 or moved.sum() < 3:
        return None
    rs = [np.corrcoef(a[moved], b[moved])[0, 1] for a, b in itertools.combinations(stack, 2)]
    return float(mean(rs))


def lens_rows(values: dict, archs: list[str], seeds: list[int], field: str) -> tuple[list[str], dict]:
    """The states every arch reports, and per arch one cell per state: vanilla's mean ± std over
    seeds, every other arch's paired difference to vanilla with its 95 % interval and Holm verdict."""
    states = values["vanilla"][seeds[0]]["lens"]["state"]
    common = [s for s in states if all(s in values[a][seeds[0]]["lens"]["state"] for a in archs)]

    def at(a: str, seed: int, state: str) -> float:
        lens = values[a][seed]["lens"]
        return lens[field][lens["state"].index(state)]

    cells: dict[str, list[str]] = {a: [] for a in archs}
    for state in common:
        base = [at("vanilla", s, state) for s in seeds]
        cells["vanilla"].append(f"{mean(base):.3f}" + (f" ± {stdev(base):.3f}" if len(seeds) > 1 else ""))
        diffs = {
            a: stats.paired_difference({s: at(a, s, state) for s in seeds}, dict(zip(seeds, base))) for a in archs[1:]
        }
        holm = stats.holm([diffs[a]["p"] for a in archs[1:]])
        for a, p_h in zip(archs[1:], holm):
            d = diffs[a]
            if p_h is None:
                cells[a].append(f"{d['delta']:+.3f}")
                continue
            # "better" for agreement means higher, for NLL lower: say which way, not better/worse
            word = "n.d." if p_h >= 0.05 else ("higher" if d["delta"] > 0 else "lower")
            cells[a].append(f"{d['delta']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] (p {p_h:.3f}) {word}")
    return common, cells


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="one table's run folder, e.g. runs/reproduce/text-long")
    p.add_argument(
        "--archs", required=True, help="comma-separated, vanilla among them (every method is paired with it)"
    )
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--batches", type=int, default=20, help="validation batches measured per run (default 20)")
    p.add_argument("--out", required=True, help="output stem, e.g. results/analysis/depth-text-long")
    args = p.parse_args(argv)
    runs = Path(args.runs)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise SystemExit(f"--seeds {args.seeds!r}: comma-separated integers, e.g. 0,1,2") from None
    archs = args.archs.split(",")
    if "vanilla" not in archs:
        raise SystemExit("--archs must include vanilla: every method is paired against it")
    if args.batches < 1:
        raise SystemExit(f"--batches {args.batches}: must be >= 1")
    archs = ["vanilla"] + [a for a in archs if a != "vanilla"]
    found = {}
    for a in archs:  # every run located (and finished) before any is scored
        if not (runs / a).is_dir():
            raise SystemExit(f"{runs / a}: no runs of {a} (--runs is one table's folder; leave {a} out with --archs)")
        found[a] = seed_runs(runs / a, seeds)
    values: dict[str, dict[int, dict]] = {a: {} for a in archs}
    for a in archs:
        for s in seeds:
            values[a][s] = run_values(found[a][s], args.batches)
            print(f"[depth] {a} seed {s}", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lens_csv = []
    for a in archs:
        for s in seeds:
            lens = values[a][s]["lens"]
            lens_csv += [
                [a, s, st, f"{n:.6f}", f"{g:.6f}", lens["tokens"]]
                for st, n, g in zip(lens["state"], lens["nll"], lens["agree"])
            ]
    save_csv(
        out.with_suffix(".csv"), ["arch", "seed", "state", "nll", "top1_agreement_with_output", "tokens"], lens_csv
    )
    write_json(
        out.with_suffix(".json"),
        {
            "runs": {
                a: {str(s): {"path": str(found[a][s].path.relative_to(runs.resolve())), **values[a][s]} for s in seeds}
                for a in archs
            }
        },
        indent=None,
    )

    cmd = "python -m lit_vattn.experiments.depth_table " + " ".join(sys.argv[1:] if argv is None else argv)
    tokens = values["vanilla"][seeds[0]]["lens"]["tokens"]
    lines = [
        f"# Depth maps and logit lens over seeds: `{runs}`",
        "",
        f"- command: `{cmd}`",
        f"- commit: {git_commit()} (table); checkpoints: `{runs}/<arch>/[lr<lr>/]seed<s>/fit/checkpoints/last.ckpt` "
        f"(commits in their {DONE}); date: {datetime.date.today().isoformat()}; hardware: {hardware()} for this scoring",
        f"- measured: the first {args.batches} validation batches of each run ({tokens:,} target tokens), seeds {seeds}",
        "- logit lens: the final norm + head applied to each state the network consumes (`in<l>` = block l's "
        "input, the depth mixture for VA; `readout` = what the head reads); vanilla row: mean ± std over seeds; "
        "other rows: paired difference to vanilla at the same state and seed, 95 % t interval over seeds, "
        "paired t Holm-corrected across the methods of each state; higher/lower when that p < 0.05, else "
        "n.d. = no detectable difference at this scale",
    ]
    for field, title in (("agree", "top-1 agreement with the model's output"), ("nll", "next-token NLL (nats/token)")):
        states, cells = lens_rows(values, archs, seeds, field)
        lines += [
            "",
            f"Logit lens, {title}:",
            "",
            "| arch | " + " | ".join(states) + " |",
            "|---|" + "---|" * len(states),
        ]
        lines += [f"| {a} | " + " | ".join(cells[a]) + " |" for a in archs]
    mapped = [(a, name) for a in archs for name in values[a][seeds[0]]["maps"]]
    if mapped:
        lines += [
            "",
            "Depth maps (each cell: mean ± std over seeds; seed agreement r = mean Pearson correlation between "
            "every two seeds' maps over the cells that differ between seeds, none where fewer than three do):",
        ]
    for a, name in mapped:
        m0 = values[a][seeds[0]]["maps"][name]
        mats = [np.asarray(values[a][s]["maps"][name]["values"], dtype=float) for s in seeds]
        mu, sd = np.mean(mats, 0), (np.std(mats, 0, ddof=1) if len(seeds) > 1 else np.zeros_like(mats[0]))
        r = seed_agreement(mats)
        lines += ["", f"**{a}: {name}** ({m0['what']}; seed agreement r = {'none' if r is None else f'{r:.2f}'})", ""]
        lines += ["| | " + " | ".join(m0["cols"]) + " |", "|---|" + "---|" * len(m0["cols"])]
        lines += [
            f"| {row} | " + " | ".join(f"{mu[i, j]:.3f} ± {sd[i, j]:.3f}" for j in range(mu.shape[1])) + " |"
            for i, row in enumerate(m0["rows"])
        ]
    text = "\n".join(lines) + "\n"
    write_text(out.with_suffix(".md"), text)
    plot(out.with_suffix(".png"), values, archs, seeds, mapped, str(runs))
    print(text)
    return text


def plot(path: Path, values, archs, seeds, mapped, title: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2 + len(mapped), figsize=(5.2 * 2 + 3.2 * len(mapped), 3.8), squeeze=False)
    styles = [method_style(i, plt) for i in range(len(archs))]
    for ax, field, label in zip(axes[0], ("agree", "nll"), ("top-1 agreement with the output", "NLL (nats/token)")):
        for a, style in zip(archs, styles):
            lens = [values[a][s]["lens"] for s in seeds]
            ys = np.array([x[field] for x in lens])  # (seeds, states)
            xs = np.arange(ys.shape[1])
            ax.errorbar(xs, ys.mean(0), yerr=ys.std(0, ddof=1) if len(seeds) > 1 else None, capsize=2, label=a, **style)
            ax.set_xticks(xs, lens[0]["state"], fontsize=7)
        ax.set_xlabel("state consumed (in<l> = block l's input)")
        ax.set_ylabel(f"{label}, mean ± std over seeds")
    axes[0][0].legend(fontsize=6)
    for ax, (a, name) in zip(axes[0][2:], mapped):
        m0 = values[a][seeds[0]]["maps"][name]
        mu = np.mean([np.asarray(values[a][s]["maps"][name]["values"], dtype=float) for s in seeds], 0)
        im = ax.imshow(mu, cmap="viridis", vmin=0, vmax=max(1e-6, float(mu.max())), aspect="auto")
        ax.set_xticks(range(len(m0["cols"])), m0["cols"], rotation=90, fontsize=6)
        ax.set_yticks(range(len(m0["rows"])), m0["rows"], fontsize=6)
        ax.set_title(f"{a}: {name}", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"Depth maps and logit lens over seeds {seeds}: {title}", fontsize=10)
    fig.tight_layout()
    savefig(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    main()
