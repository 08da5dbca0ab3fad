"""``lit-vattn-sla-grid``: Skip-Layer Attention over a grid of skip blocks x skip heads.

The SLA paper's best setting is "9 skip layers and 9 skip heads" of GPT-2's 12. Here the grid reads
them as ``n_skip_layers`` (how many final blocks have skip heads) and ``n_skip_heads`` (how many of a
skip block's heads read the block below). The paper's other reading of n_l, several source layers per
block, is the ``sla-two-sources`` control. The grid runs in three steps:

1. The reference table: vanilla and SLA at its default cell (round(3L/4) blocks x round(3H/4) heads).
   Each method's lr is tuned on ``--lr-seed``, a seed the table does not use, and the table's seeds
   train at the chosen lr. This is ``lit-vattn-reproduce --preset <preset> --archs vanilla,sla --lrs
   ... --lr-seed ...``, with records in ``<records>/<modality>-<preset>``.
2. Every other cell: SLA at the reference's SLA lr (one lr for the grid, stated in the table), set
   with ``--override`` with the cell's two switches. Records go in ``<records>/sla-grid/l<n_l>-h<n_h>/<modality>-<preset>``
   (reproduce refuses runs made with another override in the same folder).
3. The table ``<out>/sla-grid-<modality>-<preset>.md`` (+ ``.json``). Per cell it gives validation and
   test NLL over seeds and the paired test-NLL difference on the same seeds, each with a 95 % t
   interval and a paired t-test, against vanilla and against the default cell. Each of these two
   families is declared here, before the runs, and Holm-corrected on its own. The best cell is chosen
   on validation NLL; test is never consulted.

    lit-vattn-sla-grid --preset long-deep --layers 2,4,6 --heads 1,2,3 --seeds 0,1,2 --lr-seed 100 \\
        --lrs 1.5e-3,3e-3,6e-3,1.2e-2 --parallel 2 --records results/records
    lit-vattn-sla-grid <the same options> --runs results/records --table-only   # rebuilt from the records
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from pathlib import Path
from statistics import mean, stdev
from typing import Optional

from lit_vattn.arch.registry import CONFIG_DIR
from lit_vattn.experiments.records import RunRecord, seed_runs
from lit_vattn.experiments.stats import holm, paired_difference
from lit_vattn.experiments.tables import Column, pval, render
from lit_vattn.io import write_json, write_text
from lit_vattn.provenance import git_commit, hardware

GRID = "sla-grid"  # the records folder of the cells other than the default
KEY = "model.init_args.arch.init_args"  # where the cell's two switches go


def preset_shape(config_dir: Path, preset: str) -> tuple[int, int, int]:
    """(n_layer, n_head, d_model) of a reproduce preset."""
    import yaml

    path = Path(config_dir) / "reproduce" / f"{preset}.yaml"
    if not path.is_file():
        raise SystemExit(f"--preset {preset}: no {path}")
    c = yaml.safe_load(path.read_text())["model"]["init_args"]["config"]
    return c["n_layer"], c["n_head"], c["d_model"]


def skip_blocks(n_layer: int, n_head: int, d_model: int, n_l: int, n_h: int) -> list[int]:
    """The blocks that get skip heads at this cell, as the reader resolves them (and its refusal of a
    cell that cannot exist, before anything trains)."""
    from lit_vattn.arch.sla import SkipLayerAttention
    from lit_vattn.model.config import GPTConfig

    reader = SkipLayerAttention(n_skip_layers=n_l, n_skip_heads=n_h)
    try:
        reader.validate(GPTConfig(n_layer=n_layer, n_head=n_head, d_model=d_model))
    except ValueError as e:
        raise SystemExit(f"--layers {n_l} / --heads {n_h}: {e}") from None
    return list(reader.skip_layers)


def cell_name(n_l: int, n_h: int) -> str:
    return f"l{n_l}-h{n_h}"


def reproduce_argv(args, archs: str, runs: str, records: Optional[str], tune: bool) -> list[str]:
    argv = ["--modality", args.modality, "--preset", args.preset, "--archs", archs, "--seeds", args.seeds_text]
    argv += ["--lrs", args.lrs, "--lr-seed", str(args.lr_seed), "--widen", str(args.widen)] if tune else []
    argv += ["--runs", runs, "--parallel", str(args.parallel), "--config-dir", str(args.config_dir)]
    argv += [*(["--records", records] if records else []), *(["--table-only"] if args.table_only else [])]
    return argv


def run(args) -> dict:
    """Train (or with --table-only read) the reference and the cells; returns the runs per cell."""
    from lit_vattn.experiments import reproduce

    table = f"{args.modality}-{args.preset}"
    ref_out = str(Path(args.out) / f"{GRID}-{table}")
    records = args.records
    reproduce.main([*reproduce_argv(args, "vanilla,sla", args.runs, records, True), "--out", ref_out])
    root = Path(records or args.runs)
    base = seed_runs(root / table / "vanilla", args.seeds)
    default = seed_runs(root / table / "sla", args.seeds)
    lr = default[args.seeds[0]].lr
    cells = {args.default: default}
    for n_l, n_h in args.cells:
        if (n_l, n_h) == args.default:
            continue
        sub = f"{GRID}/{cell_name(n_l, n_h)}"
        if not args.table_only:
            reproduce.main(
                [
                    *reproduce_argv(
                        args, "sla", str(Path(args.runs) / sub), records and str(Path(records) / sub), False
                    ),
                    "--out",
                    str(Path(args.runs) / sub / "tables"),
                    "--override",
                    "--model.init_args.lr",
                    f"{lr:g}",
                    f"--{KEY}.n_skip_layers",
                    str(n_l),
                    f"--{KEY}.n_skip_heads",
                    str(n_h),
                ]
            )
        cells[(n_l, n_h)] = seed_runs(root / sub / table / "sla", args.seeds)
    from lit_vattn.experiments.reproduce import check_one_data

    check_one_data([r.done for runs in (base, *cells.values()) for r in runs.values()], None)  # one data set
    return {"base": base, "cells": cells, "lr": lr}


def _test(runs: dict[int, RunRecord]) -> dict[int, float]:
    return {s: r.done["test_nll"] for s, r in runs.items()}


def rows_of(args, got: dict) -> list[dict]:
    L, H, D = args.shape
    rows = []
    for (n_l, n_h), runs in sorted(got["cells"].items()):
        rows.append(
            {
                "n_skip_layers": n_l,
                "n_skip_heads": n_h,
                "default": (n_l, n_h) == args.default,
                "blocks": skip_blocks(L, H, D, n_l, n_h),
                "lr": runs[args.seeds[0]].lr,
                "params": runs[args.seeds[0]].done.get("params"),
                "val": [r.done["val_nll"] for r in runs.values()],
                "test": [r.done["test_nll"] for r in runs.values()],
                "vs_vanilla": paired_difference(_test(runs), _test(got["base"])),
                "vs_default": None
                if (n_l, n_h) == args.default
                else paired_difference(_test(runs), _test(got["cells"][args.default])),
            }
        )
    for key in ("vs_vanilla", "vs_default"):  # two declared families, each Holm-corrected on its own
        tested = [r for r in rows if r[key]]
        for r, p in zip(tested, holm([r[key]["p"] for r in tested])):
            r[key]["p_holm"] = p
    return rows


def _diff(c: Optional[dict]) -> str:
    return "—" if not c else f"{c['delta']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]"


def write(args, got: dict, rows: list[dict]) -> Path:
    L, H, D = args.shape
    base = got["base"]
    cells = [
        {
            "cell": f"{r['n_skip_layers']} x {r['n_skip_heads']}" + (" (default)" if r["default"] else ""),
            "blocks": ", ".join(map(str, r["blocks"])),
            "lr": f"{r['lr']:g}",
            "params": f"{r['params'] / 1e6:.2f} M" if r["params"] else "—",
            "val": f"{mean(r['val']):.4f} ± {stdev(r['val']):.4f}",
            "test": f"{mean(r['test']):.4f} ± {stdev(r['test']):.4f}",
            "van": _diff(r["vs_vanilla"]),
            "p_van": pval(r["vs_vanilla"]["p_holm"]),
            "dflt": _diff(r["vs_default"]),
            "p_dflt": pval(r["vs_default"]["p_holm"]) if r["vs_default"] else "—",
        }
        for r in rows
    ]
    cols = [
        Column("cell", "skip blocks x skip heads"),
        Column("blocks", "blocks with skip heads"),
        Column("lr", "lr"),
        Column("params", "params"),
        Column("val", "val NLL"),
        Column("test", "test NLL"),
        Column("van", "Δ test vs vanilla [95 %]"),
        Column("p_van", "p (Holm, cells)"),
        Column("dflt", "Δ test vs default [95 %]"),
        Column("p_dflt", "p (Holm, cells)"),
    ]
    best = min(rows, key=lambda r: mean(r["val"]))
    van_val, van_test = [r.done["val_nll"] for r in base.values()], [r.done["test_nll"] for r in base.values()]
    every = [r for runs in (base, *got["cells"].values()) for r in runs.values()]
    lines = [
        f"# Skip-Layer Attention grid, `{args.modality}-{args.preset}` ({L} x {D}, {H} heads)",
        "",
        f"- command: `{args.command}`",
        f"- commit: {git_commit()} (table); runs made at {', '.join(sorted({r.done.get('commit', '?') for r in every}))}; "
        f"date: {datetime.date.today().isoformat()}; hardware: "
        f"{hardware(sorted({r.done['device'] for r in every if r.done.get('device')}))}",
        f"- seeds: {args.seeds}; tokens per run: {base[args.seeds[0]].done.get('tokens_seen', 0) / 1e6:.2f} M. "
        f"vanilla at its own lr ({base[args.seeds[0]].lr:g}), SLA's default cell at its own "
        f"({got['lr']:g}), both chosen on validation over {args.lrs} on seed {args.lr_seed} (not in the table); "
        "every other cell at the default cell's lr",
        f"- vanilla: val {mean(van_val):.4f} ± {stdev(van_val):.4f}, test {mean(van_test):.4f} ± {stdev(van_test):.4f}",
        "- families (declared before the runs): every cell against vanilla; every other cell against the default; "
        "Holm over each. Δ = test NLL (nats/token) minus the other's on the same seed; 95 % interval: Student t "
        "over seeds; p: paired t over seeds",
        f"- best cell by validation NLL (test not consulted): {best['n_skip_layers']} x {best['n_skip_heads']}",
        "",
        *render(cols, cells),
        "",
    ]
    out = Path(args.out) / f"{GRID}-{args.modality}-{args.preset}"
    write_text(out.with_suffix(".md"), "\n".join(lines))
    write_json(
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


def parse_ints(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"{flag} {text!r}: give comma-separated integers, e.g. 2,4,6") from None


def main(argv: Optional[list[str]] = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modality", default="text")
    p.add_argument("--preset", default="long-deep", help="configs/reproduce/<preset>.yaml (its shape and budget)")
    p.add_argument("--layers", default="2,4,6", help="n_skip_layers values: how many final blocks have skip heads")
    p.add_argument("--heads", default="1,2,3", help="n_skip_heads values: skip heads per skip block")
    p.add_argument("--seeds", default="0,1,2", help="the table's seeds")
    p.add_argument("--lr-seed", type=int, default=100, help="the seed the lrs are chosen on; not one of --seeds")
    p.add_argument("--lrs", default="1.5e-3,3e-3,6e-3,1.2e-2", help="the lr grid of vanilla and the default cell")
    p.add_argument("--widen", type=int, default=1, help="values added past an edge lr choice (reproduce --widen)")
    p.add_argument("--parallel", type=int, default=1, help="runs at once (reproduce --parallel)")
    p.add_argument("--runs", default="runs/reproduce", help="where run directories go")
    p.add_argument("--records", default=None, help="keep each run's record here (reproduce --records)")
    p.add_argument("--out", default="results", help="the grid's table, and the reference table in sla-grid-<table>/")
    p.add_argument("--config-dir", default=str(CONFIG_DIR))
    p.add_argument("--table-only", action="store_true", help="train nothing: read the finished runs (or records)")
    args = p.parse_args(argv)
    args.command = "lit-vattn-sla-grid " + shlex.join(sys.argv[1:] if argv is None else argv)
    args.seeds_text = args.seeds
    args.seeds = parse_ints(args.seeds, "--seeds")
    if args.lr_seed in args.seeds:
        raise SystemExit(
            f"--lr-seed {args.lr_seed} is one of --seeds {args.seeds}: choose a seed the table does not use"
        )
    if len(args.seeds) < 2:
        raise SystemExit(f"--seeds {args.seeds_text}: the intervals need at least two seeds")
    args.shape = preset_shape(Path(args.config_dir), args.preset)
    L, H, D = args.shape
    args.default = (round(3 * L / 4), round(3 * H / 4))  # the reader's defaults: the reference's SLA
    args.cells = [(a, b) for a in parse_ints(args.layers, "--layers") for b in parse_ints(args.heads, "--heads")]
    for a, b in args.cells:  # an impossible cell is refused before anything trains
        skip_blocks(L, H, D, a, b)
    md = write(args, got := run(args), rows_of(args, got))
    print(md.read_text())
    return md


def console() -> None:
    """The console script (``main`` returns the table's path for Python callers)."""
    main()


if __name__ == "__main__":
    console()
