"""The curves of a table's runs: validation (NLL or a probe's accuracy) at log-spaced steps,
paired with vanilla over tokens seen (``-budget.csv`` / ``.png``), and the training loss
(``-loss.png``); ``lit-vattn-reproduce`` writes them beside each table."""

from __future__ import annotations

import csv
from pathlib import Path
from statistics import mean, stdev
from typing import Optional

import numpy as np

from lit_vattn.experiments.records import RunRecord
from lit_vattn.io import atomic_path
from lit_vattn.plotting import plt as pyplot

MARKERS = "os^vD<>ph*"


def method_style(i: int, plt) -> dict:
    """Line style of the i-th method of a plot: tab20 colour and a marker cycle, so thirteen methods
    (and controls) stay distinguishable."""
    return {"color": plt.cm.tab20(i % 20), "marker": MARKERS[i % len(MARKERS)], "ms": 3}


def budget_rows(results: list[dict], metric: str = "nll") -> list[dict]:
    """Per architecture and curve step: tokens seen, the validation metric ("nll", or "acc" for a
    probe: columns val_<metric>_mean/_std) over seeds and the paired difference to vanilla on the
    same seeds (mean, std); [] when no run has a curve."""
    curves = {}
    for r in results:
        pts = RunRecord.at(r["run_dir"]).curve
        if pts:
            curves[(r["arch"], r["seed"])] = {p["step"]: p for p in pts}
    rows = []
    for arch in dict.fromkeys(a for a, _ in curves):
        seeds = sorted(s for a, s in curves if a == arch)
        steps = sorted(set.intersection(*(set(curves[(arch, s)]) for s in seeds)))
        for step in steps:
            nll = [curves[(arch, s)][step][metric] for s in seeds]
            d = [
                curves[(arch, s)][step][metric] - curves[("vanilla", s)][step][metric]
                for s in seeds
                if arch != "vanilla" and step in curves.get(("vanilla", s), {})
            ]
            sd = lambda xs: stdev(xs) if len(xs) > 1 else float("nan")  # noqa: E731
            rows.append(
                {
                    "arch": arch,
                    "step": step,
                    "tokens": curves[(arch, seeds[0])][step]["tokens"],
                    "seeds": len(seeds),
                    f"val_{metric}_mean": mean(nll),
                    f"val_{metric}_std": sd(nll),
                    "paired_seeds": len(d),
                    "delta_mean": mean(d) if d else float("nan"),
                    "delta_std": sd(d) if d else float("nan"),
                }
            )
    return rows


def plot_budget(
    results: list[dict], stem: Path, title: str, counts: Optional[list[dict]] = None, metric: str = "nll"
) -> Optional[Path]:
    """``<stem>.csv`` and ``<stem>.png`` from the runs' budget curves (``BudgetCurve``): validation
    NLL against tokens seen with the count-model floors, and each method's paired difference to
    vanilla with its seed spread. None (nothing written) when the runs recorded no curve."""
    rows = budget_rows(results, metric)
    what = {"nll": "validation NLL (nats/token)", "acc": "validation accuracy"}[metric]
    if not rows:
        return None
    fields = list(rows[0])
    with atomic_path(stem.with_suffix(".csv")) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)

    plt = pyplot()

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8))
    names = list(dict.fromkeys(r["arch"] for r in rows))
    for i, arch in enumerate(names):
        rs, style = [r for r in rows if r["arch"] == arch], method_style(i, plt)
        x = [r["tokens"] for r in rs]
        ax.plot(x, [r[f"val_{metric}_mean"] for r in rs], "-", label=f"{arch} (n={rs[0]['seeds']})", **style)
        if arch != "vanilla" and any(r["paired_seeds"] for r in rs):
            m, sd = np.array([r["delta_mean"] for r in rs]), np.nan_to_num(np.array([r["delta_std"] for r in rs]))
            bx.plot(x, m, "-", label=arch, **style)
            bx.fill_between(x, m - sd, m + sd, color=style["color"], alpha=0.15)
    for c in counts or []:
        ax.axhline(c["val_nll"], ls="--", lw=1, color="gray")
        ax.annotate(
            f"{c['arch']} (whole val split)", (ax.get_xlim()[0], c["val_nll"]), fontsize=7, color="gray", va="bottom"
        )
    bx.axhline(0, color="black", lw=0.8)
    for a in (ax, bx):
        a.set_xscale("log")
        a.set_xlabel("training tokens seen")
        a.grid(alpha=0.3)
    ax.set_ylabel(f"{what}, mean over seeds")
    bx.set_ylabel(f"Δ {what.split(' (')[0].removeprefix('validation ')} vs vanilla (same seed), mean ± std", fontsize=8)
    ax.set_title(f"{title}: {what.split(' (')[0]} over training", fontsize=9)
    bx.set_title("paired difference to vanilla over training", fontsize=9)
    ax.legend(fontsize=6)
    if bx.get_legend_handles_labels()[0]:  # a table without vanilla or without other methods has no pairs
        bx.legend(fontsize=6)
    fig.tight_layout()
    with atomic_path(stem.with_suffix(".png")) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return stem


def plot_shared_lr_budget(sweep: list[dict], stem: Path, title: str) -> Optional[Path]:
    """``<stem>.csv`` and ``<stem>.png``: the lr sweep's runs (one seed, every method at every lr of the
    grid) paired with vanilla at the *same* lr, one panel per lr every method finished. Beside the
    tuned table's curves (each method at its own lr), these say whether a gap over training is the
    method's or its lr's: a method with a lower lr has its own schedule. None when the sweep has no
    curves or no lr that every method ran."""
    done = [r for r in sweep if not r.get("failed") and r.get("lr") is not None]
    archs = set(r["arch"] for r in done)
    lrs = sorted(x for x in {r["lr"] for r in done} if {r["arch"] for r in done if r["lr"] == x} == archs)
    if "vanilla" not in archs or len(archs) < 2:
        return None
    panels = [(x, budget_rows([r for r in done if r["lr"] == x])) for x in lrs]
    panels = [(x, rows) for x, rows in panels if any(r["paired_seeds"] for r in rows)]
    if not panels:
        return None
    rows = [{"lr": x, **r} for x, rs in panels for r in rs]
    with atomic_path(stem.with_suffix(".csv")) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.8, 4.2), sharey=True, squeeze=False)
    names = [a for a in dict.fromkeys(r["arch"] for r in rows) if a != "vanilla"]
    for ax, (x, rs) in zip(axes[0], panels):
        for i, arch in enumerate(names):
            mine = [r for r in rs if r["arch"] == arch and r["paired_seeds"]]
            if mine:
                ax.plot(
                    [r["tokens"] for r in mine],
                    [r["delta_mean"] for r in mine],
                    "-",
                    label=arch,
                    **method_style(i + 1, plt),
                )
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training tokens seen")
        ax.set_title(f"every method at lr {x:g}", fontsize=9)
        ax.grid(alpha=0.3)
    seeds = sorted({r["seed"] for r in done})
    axes[0][0].set_ylabel(f"Δ validation NLL vs vanilla, same lr, seed {', '.join(map(str, seeds))}", fontsize=8)
    axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"{title}: the lr sweep's runs paired at equal lr", fontsize=9)
    fig.tight_layout()
    with atomic_path(stem.with_suffix(".png")) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return stem


def plot_curves(results: list[dict], path: Path, title: str) -> None:
    plt = pyplot()

    archs = list(dict.fromkeys(r["arch"] for r in results))
    ncol = 1 if len(archs) <= 14 else 2  # the legend beside the axes, so that no count of methods squeezes them
    fig, ax = plt.subplots(figsize=(7 + 2.2 * ncol, 4.2))
    for i, arch in enumerate(archs):
        curves = []
        for r in results:
            if r["arch"] != arch:
                continue
            pts = {int(step): loss for step, _, loss in RunRecord.at(r["run_dir"]).fit_summary["train"]}
            curves.append(pts)
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if steps:
            style = ("-", "--", ":")[i // 10 % 3]  # the colour cycle repeats every 10 lines
            ax.plot(steps, [mean(c[s] for c in curves) for s in steps], style, label=f"{arch} (n={len(curves)})")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats/token), mean over seeds")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=ncol, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
