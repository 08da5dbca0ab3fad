"""The mixing-lr sweep: does learned depth mixing help once its weights can move?

At the ``tiny`` budget depth-mixing weights trained at the base lr barely move, so a table there
tests each method's init. Here each method with mixing weights trains at ``mix_lr_mult`` m (each m
a records folder made by ``lit-vattn-reproduce ... --records <records>/mix<m> --override
--model.init_args.mix_lr_mult <m>`` at the method's own tuned base lr), and the table gives per
(method, m): validation and test NLL over seeds, how far the mixing weights moved
(``stats.mixing_moved``: the largest and the RMS change from init over the run, mean over seeds),
and paired differences on the same seeds, each with a 95 % Student-t interval and a paired t-test:

- the declared family (``--control``, default VA against frozen VA: the same reader with its
  weights fixed at their uniform init, so the difference is what learning the routing buys),
  Holm-corrected over the m values;
- every method at every m against vanilla, and against itself at the first m (the default),
  each Holm-corrected on its own.

The multiplier a method should default to is the m with the lowest mean *validation* NLL (test
never consulted); the table says whether it differs detectably from m = 1.

    lit-vattn-mix-sweep --table text-tiny --mults 1,10,30 --archs va,hc,denseformer
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from pathlib import Path
from statistics import mean, stdev

from lit_vattn.experiments.records import RunRecord, seed_runs
from lit_vattn.experiments.stats import holm, paired_difference
from lit_vattn.experiments.tables import Column, pval, render
from lit_vattn.io import write_json, write_text
from lit_vattn.provenance import git_commit, hardware


def moved(run: RunRecord) -> tuple[float, float]:
    """(largest, largest RMS) change of the run's depth-mixing parameters from their init."""
    m = (run.fit_summary.get("stats") or {}).get("mixing_moved")
    if not m:
        raise SystemExit(f"{run.path}: its fit summary has no mixing_moved (made before it was recorded, or resumed)")
    return max(v["max_abs"] for v in m.values()), max(v["rms"] for v in m.values())


def compare(a: dict[int, RunRecord], b: dict[int, RunRecord]) -> dict:
    """Paired test NLL difference a - b over their common seeds (``stats.paired_difference``)."""
    return paired_difference(
        {s: r.done["test_nll"] for s, r in a.items()}, {s: r.done["test_nll"] for s, r in b.items()}
    )


def sweep(args) -> list[dict]:
    root, seeds = Path(args.records), args.seeds
    ref = root / args.reference / args.table  # the control and the baseline, trained beside the sweep
    base = seed_runs(ref / args.baseline, seeds)
    controls = dict(c.split("=") for c in args.control)
    rows = []
    for arch in args.archs:
        ctrl = seed_runs(ref / controls[arch], seeds) if arch in controls else None
        first = seed_runs(root / f"mix{args.mults[0]:g}" / args.table / arch, seeds)
        for m in args.mults:
            runs = seed_runs(root / f"mix{m:g}" / args.table / arch, seeds)
            mv = [moved(r) for r in runs.values()]
            rows.append(
                {
                    "arch": arch,
                    "mult": m,
                    "lr": runs[seeds[0]].lr,
                    "val": [r.done["val_nll"] for r in runs.values()],
                    "test": [r.done["test_nll"] for r in runs.values()],
                    "moved_max": mean(x for x, _ in mv),
                    "moved_rms": mean(y for _, y in mv),
                    "vs_base": compare(runs, base),
                    "vs_control": compare(runs, ctrl) if ctrl else None,
                    "vs_first": compare(runs, first) if m != args.mults[0] else None,
                    "control": controls.get(arch),
                }
            )
    for key in ("vs_base", "vs_control", "vs_first"):  # each family Holm-corrected on its own
        tested = [r for r in rows if r[key]]
        for r, p in zip(tested, holm([r[key]["p"] for r in tested])):
            r[key]["p_holm"] = p
    return rows


def _diff(c) -> str:
    if not c:
        return "—"
    return f"{c['delta']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]"


def write(args, rows: list[dict]) -> Path:
    cells = []
    for r in rows:
        c, b = r["vs_control"], r["vs_base"]
        cells.append(
            {
                "arch": r["arch"],
                "mult": f"{r['mult']:g}",
                "lr": f"{r['lr']:g}",
                "val": f"{mean(r['val']):.4f} ± {stdev(r['val']):.4f}",
                "test": f"{mean(r['test']):.4f} ± {stdev(r['test']):.4f}",
                "moved": f"{r['moved_max']:.3f} / {r['moved_rms']:.3f}",
                "ctrl": f"{r['control']}: {_diff(c)}" if c else "—",
                "p_ctrl": pval(c["p_holm"]) if c else "—",
                "base": _diff(b),
                "p_base": pval(b["p_holm"]),
                "first": _diff(r["vs_first"]),
                "p_first": pval(r["vs_first"]["p_holm"]) if r["vs_first"] else "—",
            }
        )
    cols = [
        Column("arch", "arch"),
        Column("mult", "mix_lr_mult"),
        Column("lr", "base lr"),
        Column("val", "val NLL"),
        Column("test", "test NLL"),
        Column("moved", "mixing moved (max / RMS)"),
        Column("ctrl", "Δ test vs control [95 %]"),
        Column("p_ctrl", "p (Holm, family)"),
        Column("base", f"Δ test vs {args.baseline} [95 %]"),
        Column("p_base", "p (Holm)"),
        Column("first", f"Δ test vs mix_lr_mult {args.mults[0]:g} [95 %]"),
        Column("p_first", "p (Holm)"),
    ]
    best = []
    for arch in args.archs:
        mine = [r for r in rows if r["arch"] == arch]
        pick = min(mine, key=lambda r: mean(r["val"]))
        d = pick["vs_first"]
        versus = (
            f" ({_diff(d)} test NLL vs {args.mults[0]:g}, Holm p {pval(d['p_holm'])})" if d else " (the first value)"
        )
        best.append(f"{arch}: {pick['mult']:g}{versus}")
    lines = [
        f"# Depth-mixing learning rate, `{args.table}`",
        "",
        f"- command: `{args.command}`",
        f"- commit: {git_commit()} (table); runs made at {', '.join(args.commits)}; date: "
        f"{datetime.date.today().isoformat()}; hardware: {hardware(args.devices)}",
        f"- seeds: {args.seeds}; each method at its own base lr (its `{args.table}` choice), the mixing weights at "
        f"base lr x mix_lr_mult; the controls and {args.baseline} from `{args.reference}/{args.table}`, trained with "
        "the sweep (same code and machine)",
        "- family (declared before the runs): "
        + ", ".join(f"{a} at every mix_lr_mult against {c}" for a, c in (x.split("=") for x in args.control))
        + f"; Holm over its comparisons. Against the baseline (every row) and against the same method at "
        f"mix_lr_mult {args.mults[0]:g} (every other row): Holm on each its own",
        "- Δ = test NLL (nats/token) minus the other's on the same seed; 95 % interval: Student t over seeds; p: "
        "paired t over seeds. Mixing moved: the largest absolute and the largest RMS change of a depth-mixing "
        "parameter tensor from its init, mean over seeds",
        "- default by validation NLL (test not consulted): " + "; ".join(best),
        "",
        *render(cols, cells),
        "",
    ]
    out = Path(args.out) / f"mix-lr-{args.table}"
    write_text(out.with_suffix(".md"), "\n".join(lines))
    write_json(  # the rendered cells (as every table's JSON) and the numbers behind them
        out.with_suffix(".json"),
        {
            "command": args.command,
            "table": out.with_suffix(".md").name,
            "columns": [[c.key, c.header] for c in cols],
            "rows": cells,
            "runs": rows,
        },
    )
    return out.with_suffix(".md")


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", default="results/records", help="holds <table>/ and mix<m>/<table>/")
    p.add_argument("--table", default="text-tiny", help="<modality>-<preset> of the runs")
    p.add_argument("--mults", default="1,10,30", help="the mix_lr_mult values, each a mix<m> records folder")
    p.add_argument("--archs", default="va,hc,denseformer", help="methods with depth-mixing weights")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--baseline", default="vanilla")
    p.add_argument(
        "--reference",
        default="mix1",
        help="records folder (under --records) holding the controls' and the baseline's runs: trained with the "
        "sweep, since a rerun on another machine or commit differs by a few hundredths of a nat at tiny",
    )
    p.add_argument(
        "--control", action="append", default=None, help="METHOD=CONTROL, the declared family (default va=va-frozen)"
    )
    p.add_argument("--out", default="results")
    args = p.parse_args(argv)
    args.command = "lit-vattn-mix-sweep " + shlex.join(sys.argv[1:] if argv is None else argv)
    args.mults = [float(x) for x in args.mults.split(",")]
    args.archs, args.seeds = args.archs.split(","), [int(s) for s in args.seeds.split(",")]
    args.control = args.control or ["va=va-frozen"]
    bad = [c for c in args.control if c.count("=") != 1 or c.split("=")[0] not in args.archs]
    if bad:
        raise SystemExit(f"--control {bad}: give METHOD=CONTROL with METHOD one of --archs {args.archs}")
    rows = sweep(args)
    root = Path(args.records)
    runs = [RunRecord(d.parent) for d in root.glob(f"mix*/{args.table}/**/done.json")]
    args.commits = sorted({r.done.get("commit", "?") for r in runs})
    args.devices = sorted({r.done.get("device") for r in runs if r.done.get("device")})
    md = write(args, rows)
    print(md.read_text())
    return md


def console() -> None:
    """The console script (``main`` returns the table's path for Python callers)."""
    main()


if __name__ == "__main__":
    console()
