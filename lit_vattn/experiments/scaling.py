"""The ladder's analysis: per-method scaling fits, the compute multiplier and the gap's slope.

For each method m, its seed-mean test NLL at the rungs' sizes N (non-embedding parameters) is fitted
by L_m(N) = E_m + A_m (N / N0)^(-alpha_m) (least squares, SciPy's ``curve_fit``; N0 = 1e5 only
conditions the fit). From the fits:

- k_m(N), the compute multiplier: how many times larger a vanilla model must be to reach the
  method's fitted loss at N, k = N_v / N with L_vanilla(N_v) = L_m(N) (MUDDFormer's and AttnRes'
  measure); "extrapolated" where N_v lies outside the rungs vanilla was trained at, ">" where the
  method's loss is below vanilla's fitted floor E_vanilla (no vanilla size reaches it);
- dΔ/dlnN, the slope of the gap Δ_m(N) = mean over seeds of (NLL_m - NLL_vanilla) on the same seed,
  by ordinary least squares over the rungs: negative = the gain grows with size.

Every interval is a 95 % percentile bootstrap over seeds: each resample draws, per rung, seeds with
replacement (the same seeds for every method, so differences stay paired), refits every method and
recomputes k and the slope. With three rungs a three-parameter fit passes through the means, so its
intervals carry the whole seed noise; a fit that ends on a bound (no decreasing power law through
the points) is counted and reported. Per rung, each difference also gets a paired t-test over seeds
and a 95 % t-interval, Holm-corrected within its declared family (``families``).
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from statistics import mean, stdev
from typing import Optional

import numpy as np

from lit_vattn.experiments.stats import t_interval
from lit_vattn.experiments.tables import Column, pval, render
from lit_vattn.io import write_text

N0 = 1e5
ALPHA_BOUNDS = (1e-3, 3.0)


def power_law(n, e: float, a: float, alpha: float):
    return e + a * (np.asarray(n, dtype=np.float64) / N0) ** (-alpha)


def fit_power_law(ns: list[float], losses: list[float]) -> Optional[dict]:
    """{"E", "A", "alpha", "at_bound"} of the least-squares fit, or None when it does not converge."""
    from scipy.optimize import curve_fit

    ns, losses = np.asarray(ns, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    if len(ns) < 3 or not np.all(np.isfinite(losses)):
        return None
    lo = float(losses.min())
    p0 = (max(lo - 0.5, 0.0), max(float(losses.max() - lo), 1e-3) + 0.5, 0.5)
    bounds = ([0.0, 1e-9, ALPHA_BOUNDS[0]], [lo, np.inf, ALPHA_BOUNDS[1]])
    try:
        (e, a, alpha), _ = curve_fit(power_law, ns, losses, p0=p0, bounds=bounds, maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    at_bound = e <= 1e-6 or e >= lo - 1e-6 or alpha <= ALPHA_BOUNDS[0] * 1.01 or alpha >= ALPHA_BOUNDS[1] * 0.99
    return {"E": float(e), "A": float(a), "alpha": float(alpha), "at_bound": bool(at_bound)}


def vanilla_size(fit: dict, loss: float) -> float:
    """The N at which the fit reaches ``loss``; inf where the loss is at or below its floor E."""
    if loss <= fit["E"]:
        return math.inf
    return N0 * (fit["A"] / (loss - fit["E"])) ** (1.0 / fit["alpha"])


def slope(ns: list[float], deltas: list[float]) -> float:
    """OLS slope of Δ against ln N."""
    x = np.log(np.asarray(ns, dtype=np.float64))
    return float(np.polyfit(x, np.asarray(deltas, dtype=np.float64), 1)[0])


def families(archs: list[str]) -> dict[str, list[str]]:
    """The comparison families, fixed by the registry before any run: "primary" = the suite's own
    methods against vanilla, "secondary" = every other method and control against vanilla; each is
    Holm-corrected on its own."""
    from lit_vattn.arch.registry import seed_methods

    own = set(seed_methods())
    return {
        "primary": [a for a in archs if a != "vanilla" and a in own],
        "secondary": [a for a in archs if a != "vanilla" and a not in own],
    }


def analyse(table: dict[str, dict[int, dict[int, float]]], sizes: dict[int, float], boot: int = 1000, seed: int = 0):
    """``table``: arch -> rung -> seed -> test NLL; ``sizes``: rung -> N. Returns per-arch fits,
    k(N) per rung, the slope, each with bootstrap intervals, and the count of bound or failed fits."""
    archs = list(table)
    ks = sorted(sizes)
    seeds = {k: sorted(set.intersection(*(set(table[a].get(k, {})) for a in archs))) for k in ks}
    ns = [sizes[k] for k in ks]

    def summarise(draw: dict[int, list[int]]) -> dict:
        means = {a: [mean(table[a][k][s] for s in draw[k]) for k in ks] for a in archs}
        fits = {a: fit_power_law(ns, means[a]) for a in archs}
        out = {"fits": fits, "k": {}, "slope": {}, "means": means}
        fv = fits.get("vanilla")
        for a in archs:
            if a == "vanilla":
                continue
            out["slope"][a] = slope(ns, [m - v for m, v in zip(means[a], means["vanilla"])])
            fa = fits[a]
            out["k"][a] = (
                [vanilla_size(fv, float(power_law(n, fa["E"], fa["A"], fa["alpha"]))) / n for n in ns]
                if fv and fa
                else [math.nan] * len(ns)
            )
        return out

    point = summarise(seeds)
    rng = np.random.default_rng(seed)
    samples = [summarise({k: list(rng.choice(seeds[k], size=len(seeds[k]))) for k in ks}) for _ in range(boot)]

    def interval(values: list[float]) -> tuple[float, float]:
        v = np.asarray(values, dtype=np.float64)
        v = v[~np.isnan(v)]
        return (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if len(v) else (math.nan, math.nan)

    result = {"rungs": ks, "sizes": ns, "seeds": seeds, "boot": boot, "archs": {}}
    for a in archs:
        fits = [s["fits"][a] for s in samples]
        ok = [f for f in fits if f]
        r = {
            "fit": point["fits"][a],
            "means": point["means"][a],
            "fit_intervals": {p: interval([f[p] for f in ok]) for p in ("E", "A", "alpha")},
            "failed_fits": sum(f is None for f in fits),
            "bound_fits": sum(bool(f and f["at_bound"]) for f in fits),
        }
        if a != "vanilla":
            r["slope"] = point["slope"][a]
            r["slope_interval"] = interval([s["slope"][a] for s in samples])
            r["k"] = point["k"][a]
            # inf (below vanilla's floor) counts as the top of the interval: a percentile of inf is inf
            r["k_intervals"] = [interval([min(s["k"][a][i], 1e12) for s in samples]) for i in range(len(ns))]
        result["archs"][a] = r
    return result


def _finite(x):
    """The table's data as strict JSON: non-finite numbers (k beyond vanilla's floor, a failed fit) as null."""
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def ladder_columns(unit_label: str) -> list[Column]:
    """The per-rung rows of the ladder table (markdown and JSON show the same cells)."""
    return [
        Column("rung", "rung"),
        Column("shape", "shape"),
        Column("params", "N"),
        Column("tokens", "tokens"),
        Column("arch", "arch"),
        Column("lr", "lr"),
        Column("test_nll", "test NLL"),
        Column("test_unit", f"test {unit_label}"),
        Column("delta", "Δ vs vanilla"),
        Column("ci", "95 % interval"),
        Column("p", "p (paired t)"),
        Column("p_holm", "p (Holm, family)"),
        Column("family", "family"),
        Column("verdict", "verdict (seeds, Holm)"),
    ]


def fmt_k(k: float, n: float, lo_n: float, hi_n: float) -> str:
    if math.isnan(k):
        return "no fit"
    if math.isinf(k) or k >= 1e12:
        return "> any (below vanilla's floor)"
    out = f"{k:.2f}x"
    return out + (" (extrapolated)" if not lo_n <= k * n <= hi_n else "")


def write_ladder(args, rungs_done: list[dict]) -> Path:
    """``<out>/ladder-<modality>.md`` (+ .csv, .json, .png) from the rungs' results."""
    from datamodules import modalities
    from lit_vattn.experiments.stats import holm, paired_t, verdict
    from lit_vattn.plotting import plt, save_csv, savefig
    from lit_vattn.provenance import git_commit, hardware

    unit = modalities()[args.modality].metric
    archs = list(args.archs)
    sizes = {d["rung"].k: d["rung"].params for d in rungs_done}
    table: dict[str, dict[int, dict[int, float]]] = {a: {} for a in archs}
    by: dict[tuple, list[dict]] = {}
    for d in rungs_done:
        for r in d["results"]:
            if r.get("failed") or r["seed"] not in args.seeds:
                continue
            table[r["arch"]].setdefault(d["rung"].k, {})[r["seed"]] = r["test_nll"]
            by.setdefault((d["rung"].k, r["arch"]), []).append(r)
    complete = [k for k in sizes if all(len(table[a].get(k, {})) >= 2 for a in archs)]
    fam = families(archs)
    stem = Path(args.out) / f"ladder-{args.modality}"
    stem.parent.mkdir(parents=True, exist_ok=True)

    # per rung: each difference with its paired t over seeds, Holm within its family at that rung
    rows, csv_rows = [], []
    for d in rungs_done:
        rung = d["rung"]
        base = {r["seed"]: r for r in by.get((rung.k, "vanilla"), [])}
        tests = {}
        for name, members in fam.items():
            diffs = {
                a: [r["test_nll"] - base[r["seed"]]["test_nll"] for r in by.get((rung.k, a), []) if r["seed"] in base]
                for a in members
            }
            raw = {a: paired_t(x)[1] for a, x in diffs.items()}
            adj = dict(zip(raw, holm(list(raw.values()))))
            tests.update({a: (diffs[a], raw[a], adj[a], name) for a in members})
        for a in archs:
            rs = by.get((rung.k, a), [])
            if not rs:
                continue
            nll = [r["test_nll"] for r in rs]
            cell = {
                "rung": str(rung.k),
                "shape": rung.shape,
                "params": f"{rung.params / 1e6:.3f} M",
                "tokens": f"{rung.tokens / 1e6:.2f} M",
                "arch": a,
                "lr": ", ".join(f"{x:g}" for x in sorted({r["lr"] for r in rs})),
                "test_nll": f"{mean(nll):.4f} ± {stdev(nll):.4f}" if len(nll) > 1 else f"{nll[0]:.4f}",
                "test_unit": f"{mean(r[f'test_{unit}'] for r in rs):.4f}",
                **dict.fromkeys(("delta", "ci", "p", "p_holm", "family", "verdict"), "—"),
            }
            if a in tests:
                x, p, q, name = tests[a]
                if x:
                    lo, hi = t_interval(x)
                    cell.update(
                        delta=f"{mean(x):+.4f}",
                        ci="—" if math.isnan(lo) else f"[{lo:+.4f}, {hi:+.4f}]",
                        p=pval(p),
                        p_holm=pval(q),
                        family=name,
                        verdict=verdict(mean(x), q),
                    )
            rows.append(cell)
            csv_rows += [
                [
                    rung.k,
                    rung.shape,
                    rung.params,
                    rung.tokens,
                    a,
                    r["seed"],
                    r["lr"],
                    r["test_nll"],
                    r[f"test_{unit}"],
                    r["val_nll"],
                ]
                for r in rs
            ]
    save_csv(
        stem.with_suffix(".csv"),
        ["rung", "shape", "params", "tokens", "arch", "seed", "lr", "test_nll", f"test_{unit}", "val_nll"],
        csv_rows,
    )

    fit = (
        analyse({a: {k: table[a][k] for k in complete} for a in archs}, {k: sizes[k] for k in complete}, args.boot)
        if len(complete) >= 3
        else None
    )
    commit = git_commit()
    runs_at = sorted({r.get("commit", "?") for d in rungs_done for r in d["results"]})
    devices = sorted({r["device"] for d in rungs_done for r in d["results"] if r.get("device")})
    lines = [
        f"# Scaling ladder, {args.modality}",
        "",
        f"- command: `{args.command}`",
        f"- commit: {commit} (table); runs made at {', '.join(runs_at)}; date: {datetime.date.today().isoformat()}; hardware: {hardware(devices)}",
        "- rungs (`configs/reproduce/ladder-<k>.yaml`): "
        + "; ".join(
            f"{d['rung'].k}: {d['rung'].shape}, N = {d['rung'].params:,} non-embedding parameters, {d['rung'].tokens / 1e6:.2f} M tokens"
            for d in rungs_done
        )
        + f" ({getattr(args, 'ratio_note', '20 tokens per non-embedding parameter')})",
        f"- seeds: {list(args.seeds)}; learning rates chosen on seed {args.lr_seed}, which no table row uses: "
        + "; ".join(
            f"rung {d['rung'].k}: "
            + (
                "carried from the rung below"
                if d["lr_rule"]
                else "tuned over " + "{" + ", ".join(f"{x:g}" for x in sorted({r["lr"] for r in d["sweep"]})) + "}"
            )
            for d in rungs_done
        ),
        "- families, declared by the method registry before the runs (`lit_vattn.experiments.scaling.families`), each "
        "Holm-corrected on its own at each rung: "
        + "; ".join(f"{k}: {', '.join(v) or '—'} against vanilla" for k, v in fam.items()),
        "- Δ = test NLL (nats/token) minus vanilla's on the same seed; 95 % interval: Student t over seeds; p: paired t over seeds",
        "",
        *render(ladder_columns(modalities()[args.modality].label), rows),
    ]
    checks = [r for d in rungs_done for r in d["check"]]
    if not checks and any(d["lr_rule"] for d in rungs_done):
        lines += [
            "",
            "The carried learning rates were not checked at the top rung (`--check-archs` trains them at half and "
            f"twice the carried lr on seed {args.lr_seed}).",
        ]
    if checks:
        lines += [
            "",
            f"Check of the carried learning rates at the top rung (seed {args.lr_seed}, final validation NLL):",
            "",
        ]
        lines += [
            "| arch | " + " | ".join(f"lr {x:g}" for x in sorted({r["lr"] for r in checks})) + " | carried lr best? |",
            "|---|" + "---|" * (len({r["lr"] for r in checks}) + 1),
        ]
        for a in dict.fromkeys(r["arch"] for r in checks):
            rs = {r["lr"]: r for r in checks if r["arch"] == a}
            carried = next(d["chosen"][a] for d in rungs_done if d["check"])
            ok = [r for r in rs.values() if not r.get("failed")]
            best = min(ok, key=lambda r: r["val_nll"])["lr"] if ok else None
            lines.append(
                f"| {a} | "
                + " | ".join("failed" if rs[x].get("failed") else f"{rs[x]['val_nll']:.4f}" for x in sorted(rs))
                + f" | {'yes' if best == carried else f'no: {best:g}'} |"
            )
    columns = ladder_columns(modalities()[args.modality].label)
    summary = {
        "table": stem.name + ".md",
        "modality": args.modality,
        "columns": [[c.key, c.header] for c in columns],
        "rows": rows,
        "fit": None,
    }
    if fit is None:
        lines += [
            "",
            f"No fit: it needs at least three rungs with every method on two seeds or more (complete: {complete}).",
        ]
    else:
        lo_n, hi_n = min(fit["sizes"]), max(fit["sizes"])
        lines += [
            "",
            f"Fits L(N) = E + A (N / 1e5)^(-alpha) to each method's seed-mean test NLL over rungs {fit['rungs']}, with 95 % "
            f"bootstrap intervals over seeds ({fit['boot']} resamples; bound/failed = resamples whose fit ended on a bound or "
            "did not converge). k(N): how many times larger vanilla must be to match the method's fitted loss at N; "
            "dΔ/dlnN: the slope of the gap over the rungs (negative: the gain in nats grows with size; a constant k gives a "
            "positive slope, since vanilla's own gains per doubling shrink).",
            "",
            "| arch | E | A | alpha | bound/failed | dΔ/dlnN | "
            + " | ".join(f"k(N) at rung {k}" for k in fit["rungs"])
            + " |",
            "|---|---|---|---|---|---|" + "---|" * len(fit["rungs"]),
        ]
        for a, r in fit["archs"].items():
            f, iv = r["fit"], r["fit_intervals"]
            par = [f"{f[p]:.3f} [{iv[p][0]:.3f}, {iv[p][1]:.3f}]" if f else "no fit" for p in ("E", "A", "alpha")]
            if a == "vanilla":
                extra = ["—"] + ["1 (reference)"] * len(fit["rungs"])
            else:
                s_lo, s_hi = r["slope_interval"]
                extra = [f"{r['slope']:+.4f} [{s_lo:+.4f}, {s_hi:+.4f}]"] + [
                    f"{fmt_k(k, n, lo_n, hi_n)} [{fmt_k(ki[0], n, 0, math.inf)}, {fmt_k(ki[1], n, 0, math.inf)}]"
                    for k, ki, n in zip(r["k"], r["k_intervals"], fit["sizes"])
                ]
            lines.append(
                f"| {a} | " + " | ".join(par) + f" | {r['bound_fits']}/{r['failed_fits']} | " + " | ".join(extra) + " |"
            )
        lines += [
            "",
            f"The fits interpolate between N = {lo_n:,.0f} and {hi_n:,.0f}; nothing here says what happens beyond that range.",
        ]
        summary["fit"] = fit
        fig, axes = plt().subplots(1, 2, figsize=(11, 4.2))
        grid = np.geomspace(lo_n, hi_n, 50)
        for a, r in fit["archs"].items():
            sd = [stdev(table[a][k].values()) if len(table[a][k]) > 1 else 0.0 for k in fit["rungs"]]
            line = axes[0].errorbar(fit["sizes"], r["means"], yerr=sd, marker="o", ls="none", capsize=3, label=a)
            if r["fit"]:
                axes[0].plot(
                    grid,
                    power_law(grid, r["fit"]["E"], r["fit"]["A"], r["fit"]["alpha"]),
                    color=line[0].get_color(),
                    lw=1,
                )
            if a != "vanilla":
                deltas = [[table[a][k][s] - table["vanilla"][k][s] for s in fit["seeds"][k]] for k in fit["rungs"]]
                ci = [t_interval(x) for x in deltas]
                m = [mean(x) for x in deltas]
                axes[1].errorbar(
                    fit["sizes"],
                    m,
                    yerr=[[mm - c[0] for mm, c in zip(m, ci)], [c[1] - mm for mm, c in zip(m, ci)]],
                    marker="o",
                    capsize=3,
                    label=a,
                )
        for ax, title in zip(axes, ("test NLL (seed mean ± sd) and fit", "Δ test NLL vs vanilla (95 % t-interval)")):
            ax.set_xscale("log")
            ax.set_xlabel("non-embedding parameters N")
            ax.set_title(title, fontsize=10)
            ax.legend(fontsize=8)
        axes[1].axhline(0, color="k", lw=0.6)
        fig.tight_layout()
        savefig(fig, stem.with_suffix(".png"))
        lines += [
            "",
            f"Plot: `{stem.name}.png`; per-run numbers: `{stem.name}.csv`; per-rung tables: `ladder-{args.modality}/`.",
        ]
    write_text(stem.with_suffix(".json"), json.dumps(_finite(summary), indent=1) + "\n")
    write_text(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    return stem.with_suffix(".md")
