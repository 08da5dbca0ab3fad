"""The tables of ``lit-vattn-reproduce``: finished runs' records in, markdown + CSV + curves out.

``write_tables`` writes ``<stem>.md`` (header with command, commit, date, hardware, wall time, lr
rule, tests; one row per method: params, tokens, val/test NLL mean ± std over seeds, Δ to vanilla
on the same seed, the paired t over seeds and the paired bootstrap over test windows, each
Holm-corrected across the table, the verdict, tokens/s, memory; the count-model floors; each
control against its own method; the lr sweep), ``<stem>.csv`` (one row per run) and the loss and
budget curves. It reads only what a run's record holds (``lit_vattn.experiments.records.RunRecord``), so a table is
rebuilt from committed records with ``--table-only``. The verdict words are defined here:
"better"/"worse" when both Holm p < 0.05, else "no detectable difference".
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev
from typing import Optional

from datamodules import modalities
from lit_vattn.arch.registry import control_of, seed_methods
from lit_vattn.experiments.curves import plot_budget, plot_curves, plot_shared_lr_budget
from lit_vattn.experiments.records import RunRecord, choose_lr
from lit_vattn.io import atomic_path, write_text
from lit_vattn.provenance import git_commit, hardware


def table_stem(args, results: list[dict]) -> str:
    """``<modality>-<preset>`` only for a complete table: every default architecture, >= 3 seeds,
    every run finished. Anything less gets a name of its own, so it never replaces a committed table."""
    archs = list(dict.fromkeys(r["arch"] for r in results))
    seeds = sorted({r["seed"] for r in results})
    complete = set(seed_methods()) <= set(archs) and len(seeds) >= 3 and not any(r.get("failed") for r in results)
    stem = f"{args.modality}-{args.preset}"
    if complete:
        return stem
    stem += f"-{'-'.join(archs)}-seeds{'-'.join(map(str, seeds))}"
    return stem + ("-incomplete" if any(r.get("failed") for r in results) else "")


def epochs(results: list[dict], counts: Optional[list[dict]] = None) -> str:
    """Tokens seen over the training split's size (the runs' own stats; else the count models',
    which read the whole training split of the same data)."""
    fallback = counts[0].get("split_tokens", counts[0]["train_tokens"]) if counts else None
    e = sorted(
        {
            round(r["tokens_seen"] / (r.get("train_tokens") or fallback), 2)
            for r in results
            if r.get("train_tokens") or fallback
        }
    )
    return ", ".join(f"{x:g}" for x in e) if e else "n/a"


def scored_fraction(results: list[dict]) -> str:
    """What part of val/test the runs scored, read from the first run's saved config."""
    for r in results:
        run = RunRecord.at(r["run_dir"])
        if run.config_path.exists():
            t = run.config.get("trainer", {})
            lv, lt = t.get("limit_val_batches"), t.get("limit_test_batches")

            def part(v):
                return (
                    "the whole split"
                    if v in (None, 1.0)
                    else (f"the first {v} batches" if isinstance(v, int) else f"{v:.0%} of the batches")
                )

            return f"val: {part(lv)}; test: {part(lt)} (data.batch_size windows of data.seq_len tokens)"
    return "n/a"


def fmt(xs: list[float], digits: int = 4) -> str:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{mean(xs):.{digits}f} ± {stdev(xs):.{digits}f}"


def _windows(r: dict, field: str = "nll") -> Optional[dict]:
    """The run's per-test-window sums ({index: (sum of field, tokens)}; field "nll", or "correct"
    for a probe's top-1 hits), if its test recorded them."""
    return RunRecord.at(r["run_dir"]).test_windows(field)


@dataclass(frozen=True)
class Clusters:
    """The test windows grouped into the units a bootstrap resamples instead of windows (adjacent
    windows of one document are not independent): {window start: cluster number}, and the
    clusters' name in a table ("documents", "pieces", "utterances"). Saved beside a table's runs as
    ``clusters.json`` (``save``/``load``), so ``--table-only`` needs no data."""

    of: dict
    name: str

    def save(self, path: Path) -> None:
        write_text(path, json.dumps({"name": self.name, "windows": {str(k): v for k, v in self.of.items()}}) + "\n")

    @staticmethod
    def load(path: Path) -> Optional["Clusters"]:
        if not Path(path).is_file():
            return None
        d = json.loads(Path(path).read_text())
        return Clusters({int(k): v for k, v in d["windows"].items()}, d["name"])


def window_diffs(
    rs: list[dict], base: dict, field: str = "nll", documents: Optional[Clusters] = None
) -> Optional[tuple[list[float], list[int]]]:
    """Per test window: the seed-mean difference to vanilla of the window's summed ``field`` and
    the scored tokens, over the seeds both finished; None when a run lacks windows or the windows
    differ. With ``documents`` ({window start: document}), summed per document instead: the
    clusters a bootstrap over documents resamples."""
    per_seed = []
    for r in rs:
        if r["seed"] not in base:
            continue
        a, v = _windows(r, field), _windows(base[r["seed"]], field)
        if a is None or v is None or a.keys() != v.keys():
            return None
        per_seed.append({i: (a[i][0] - v[i][0], a[i][1]) for i in a})
    if not per_seed:
        return None
    keys = sorted(per_seed[0])
    diffs, tokens = [mean(p[i][0] for p in per_seed) for i in keys], [per_seed[0][i][1] for i in keys]
    if documents is None:
        return diffs, tokens
    if any(i not in documents.of for i in keys):
        return None  # windows of another split or window length: no clusters to sum over
    sums: dict[int, list] = {}
    for i, d, t in zip(keys, diffs, tokens):
        c = sums.setdefault(documents.of[i], [0.0, 0])
        c[0] += d
        c[1] += t
    return [c[0] for c in sums.values()], [c[1] for c in sums.values()]


def significance(
    archs: list[str], by: dict, base: dict, probe: bool = False, documents: Optional[Clusters] = None
) -> dict[str, tuple]:
    """arch -> (paired-t p, its Holm p, bootstrap Holm p, verdict) against vanilla on the
    seeds both finished (``lit_vattn.experiments.stats``): on test NLL (lower is better), or for a probe on
    test accuracy (higher is better; the bootstrap over test examples of their top-1 hits). The
    bootstrap resamples test windows, or with ``documents`` whole documents."""
    return paired_tests([(a, by[a], base) for a in archs if a != "vanilla" and by.get(a)], probe, documents)


def family_tests(
    archs: list[str],
    by: dict,
    base: dict,
    probe: bool = False,
    documents: Optional[Clusters] = None,
    families: Optional[dict[str, list[str]]] = None,
) -> dict[str, tuple]:
    """``significance`` with Holm applied within each declared family instead of across the table;
    without families, one family of every arch (the table)."""
    if not families:
        return significance(archs, by, base, probe, documents)
    out: dict[str, tuple] = {}
    for members in families.values():
        out.update(significance([a for a in archs if a in members], by, base, probe, documents))
    return out


def declared_families(spec: list[str], archs: list[str]) -> dict[str, list[str]]:
    """``--family NAME=arch,arch`` (repeatable) -> {name: members}: each comparison family, declared
    in the command before any run, is Holm-corrected on its own. Every arch of the table but vanilla
    belongs to one; those no family names form the family "other"."""
    fams: dict[str, list[str]] = {}
    for item in spec or []:
        name, _, members = item.partition("=")
        names = [m.strip() for m in members.split(",") if m.strip()]
        if not name.strip() or not names:
            raise SystemExit(f"--family {item!r}: write NAME=arch,arch, e.g. primary=va,sla,las")
        unknown = [m for m in names if m not in archs or m == "vanilla"]
        if unknown:
            raise SystemExit(
                f"--family {item!r}: {', '.join(unknown)} not among the compared --archs (vanilla is the reference)"
            )
        fams[name.strip()] = names
    seen = [m for ms in fams.values() for m in ms]
    twice = sorted({m for m in seen if seen.count(m) > 1})
    if twice:
        raise SystemExit(f"--family: {', '.join(twice)} in more than one family")
    rest = [a for a in archs if a != "vanilla" and a not in seen]
    if fams and rest:
        fams["other"] = rest
    return fams


def paired_tests(
    items: list[tuple[str, list[dict], dict]], probe: bool = False, documents: Optional[Clusters] = None
) -> dict[str, tuple]:
    """name -> (paired-t p, its Holm p, bootstrap Holm p, verdict) of each (name, runs,
    reference runs by seed): the runs against the reference on the seeds both finished, Holm over
    the items; the bootstrap over windows, or over ``documents`` where given."""
    from lit_vattn.experiments.stats import holm, paired_bootstrap, paired_t, verdict2

    key, field, sign = ("test_acc", "correct", -1.0) if probe else ("test_nll", "nll", 1.0)
    diffs = [[r[key] - ref[r["seed"]][key] for r in rs if r["seed"] in ref] for _, rs, ref in items]
    raw = [paired_t(d)[1] for d in diffs]
    adj = holm(raw)
    boot = holm(
        [paired_bootstrap(*w) if w else None for w in (window_diffs(rs, ref, field, documents) for _, rs, ref in items)]
    )
    # verdict2 reads a negative difference as "better": an accuracy gain is negated
    return {
        name: (p, q, b, verdict2(sign * mean(d) if d else None, q, b))
        for (name, _, _), d, p, q, b in zip(items, diffs, raw, adj, boot)
    }


def control_lines(by: dict, probe: bool = False, documents: Optional[Clusters] = None) -> list[str]:
    """The "controls" section: each control or reading (``registry.control_of``: a method's
    registered controls; ELC-BERT-style weighting is VA's simplest explanation) in the table against its own
    method on the same seeds, with the table's two tests, Holm over these comparisons."""
    pairs = [(c, m) for c, m in control_of().items() if by.get(c) and by.get(m)]
    if not pairs:
        return []
    key = "test_acc" if probe else "test_nll"
    refs = {m: {r["seed"]: r for r in by[m]} for _, m in pairs}  # each method's runs by seed
    tests = paired_tests([(c, by[c], refs[m]) for c, m in pairs], probe, documents)
    what = "accuracy" if probe else "NLL"
    boot_header = f"p {'windows' if documents is None else documents.name} (bootstrap, Holm)"
    lines = [
        "",
        f"Controls against their own method (Δ = the control's test {what} minus the method's on the same seed, "
        'mean ± std and its 95 % Student-t interval over seeds; the same two tests, Holm-corrected across these rows; "better" = '
        + ("higher accuracy" if probe else "lower NLL")
        + " than the method):",
        "",
        f"| control | method | Δ test {what} vs method | Δ 95 % interval (seeds) | p seeds (paired t) | p seeds (Holm) | {boot_header} | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c, m in pairs:
        delta = [r[key] - refs[m][r["seed"]][key] for r in by[c] if r["seed"] in refs[m]]
        p, q, b, word = tests[c]
        lines.append(
            f"| {c} | {m} | {fmt(delta) if delta else '—'} | {interval(delta)} | {pval(p)} | {pval(q)} | {pval(b)} | {word} |"
        )
    return lines


def probe_lines(results: list[dict]) -> list[str]:
    """A probe table's header bullets: the task as configured (from the first run's saved config)
    and its chance accuracy."""
    from datamodules.probes import ProbeDataModule

    dm = ProbeDataModule(**RunRecord.at(results[0]["run_dir"]).config["data"]["init_args"])
    return [
        f"- task: {dm.describe()} (`datamodules/probes.py`)",
        f"- chance accuracy (a uniform guess among the ids an answer can be): {dm.chance_accuracy:.4f}; "
        "NLL columns are over the answers only",
    ]


TUNED_LR = "learning rate: each method's own"  # how a tuned table's header bullet starts


def lr_lines(results: list[dict], sweep: list[dict], rule: Optional[str] = None) -> list[str]:
    """The header bullet on learning rates and, after an --lrs sweep, its table; ``rule`` says how
    the lrs of a table without a sweep were chosen, where it was not the preset's one lr."""
    if not sweep and rule:
        by = {r["arch"]: r["lr"] for r in results if r.get("lr") is not None}
        return [f"- learning rate: {rule}: " + ", ".join(f"{a} {lr:g}" for a, lr in by.items())], []
    if not sweep:
        lrs = sorted({r["lr"] for r in results if r.get("lr") is not None})
        shared = (
            f"{lrs[0]:g} for every method"
            if len(lrs) == 1
            else ", ".join(f"{x:g}" for x in lrs)
            if lrs
            else "not recorded"
        )
        return [
            f"- learning rate: {shared} (the preset's; not tuned per method, so methods with other optima are at a disadvantage)"
        ], []
    grid = sorted({r["lr"] for r in sweep})
    seed = sweep[0]["seed"]
    held_out = seed not in {r["seed"] for r in results if not r.get("failed")}
    head = [
        f"- {TUNED_LR}, chosen from {{{', '.join(f'{x:g}' for x in grid)}}} by the lowest final validation "
        + (
            f"NLL of its run on seed {seed}, a seed not in the table (test never consulted); every seed of the table "
            "trained at the chosen lr (column lr)"
            if held_out
            else f"NLL of its seed-{seed} run (test never consulted); the other seeds trained at the chosen lr (column lr)"
        )
    ]
    rows = [
        "",
        f"Learning-rate sweep (seed {seed}, final validation NLL in nats/token; * = chosen; a choice at the grid's edge "
        "means the optimum may lie outside it):",
        "",
        "| arch | " + " | ".join(f"lr {x:g}" for x in grid) + " | chosen |",
        "|---|" + "---|" * (len(grid) + 1),
    ]
    for a in dict.fromkeys(r["arch"] for r in sweep):
        by_lr = {r["lr"]: r for r in sweep if r["arch"] == a}
        best = choose_lr(list(by_lr.values()))
        cells = [
            "—"
            if x not in by_lr
            else "failed"
            if by_lr[x].get("failed")
            else f"{by_lr[x]['val_nll']:.4f}" + ("*" if x == best else "")
            for x in grid
        ]
        edge = " (edge)" if best is not None and best in (grid[0], grid[-1]) else ""
        rows.append(
            f"| {a} | " + " | ".join(cells) + f" | {'none (every lr failed)' if best is None else f'{best:g}{edge}'} |"
        )
    return head, rows


def write_tables(
    args,
    results: list[dict],
    wall: float,
    counts: Optional[list[dict]] = None,
    sweep: Optional[list[dict]] = None,
    lr_rule: Optional[str] = None,
    clusters: Optional[Clusters] = None,
    families: Optional[dict[str, list[str]]] = None,
) -> tuple[Path, Path]:
    modality = modalities()[args.modality]
    unit, unit_label = modality.metric, modality.label
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / table_stem(args, results)
    fields = [
        "arch",
        "seed",
        "lr",
        "failed",
        "params",
        "tokens_seen",
        "steps",
        "val_nll",
        "test_nll",
        f"val_{unit}",
        f"test_{unit}",
        "tokens_per_sec",
        "peak_memory_gib",
        "flops_per_token",
        "device",
        "wall_seconds",
    ]
    with atomic_path(stem.with_suffix(".csv")) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in results:
            w.writerow(r)

    lr_head, lr_rows = lr_lines(results, sweep or [], lr_rule)
    in_table = {r["run_dir"] for r in results}
    n_resumed = sum(bool(r.get("resumed")) for r in {r["run_dir"]: r for r in results + (sweep or [])}.values())
    sweep_minutes = sum(r.get("wall_seconds", 0.0) for r in sweep or [] if r["run_dir"] not in in_table) / 60
    failed = [r for r in results if r.get("failed")]
    results = [r for r in results if not r.get("failed")]
    archs = list(dict.fromkeys(r["arch"] for r in results + failed))
    by = {a: sorted((r for r in results if r["arch"] == a), key=lambda r: r["seed"]) for a in archs}
    base = {r["seed"]: r for r in by.get("vanilla", [])}
    devices = sorted({r["device"] for r in results})
    hw = hardware(devices)
    probe = modality.probe
    runs_at = ", ".join(sorted({r.get("commit", "not recorded (see results/README.md)") for r in results}))
    provenance_line = f"commit: {git_commit()} (table); runs made at {runs_at}; date: {datetime.date.today().isoformat()}; hardware: {hw}"
    lines = [
        f"# {args.modality} {'in-context probe table (accuracy on the answers)' if probe else 'NLL table'}, preset `{args.preset}`",
        "",
        f"- command: `{getattr(args, 'command', None) or 'lit-vattn-reproduce ' + ' '.join(sys.argv[1:])}`",
        f"- {provenance_line}",
        *(probe_lines(results) if probe else [f"- epochs over the training split: {epochs(results, counts)}"]),
        (
            "- wall time: "
            if getattr(args, "table_only", False)
            else f"- wall time: {wall / 60:.1f} min for this invocation; "
        )
        + f"{sum(r['wall_seconds'] for r in results) / 60:.1f} min summed over the {len(results)} runs"
        + (
            " (this table was built from their summaries with --table-only)"
            if getattr(args, "table_only", False)
            else ""
        )
        + (f"; plus {sweep_minutes:.1f} min for the lr sweep's runs not in the table" if sweep else "")
        + (f"; {n_resumed} run(s) resumed after an interruption count their last attempt only" if n_resumed else ""),
        f"- seeds: {sorted({r['seed'] for r in results + failed})}; each run: same data, tokens, width, depth, optimizer and schedule; "
        f"mean ± sample std over the finished seeds; Δ = paired difference to vanilla on the same seed, with its 95 % Student-t interval over seeds"
        + (" (of test accuracy)" if probe else ""),
        f"- scored: {scored_fraction(results)}",
        *lr_head,
        (
            "- tests: per architecture, (1) a two-sided paired t-test over seeds of Δ (test accuracy minus vanilla's on the same "
            "seed: training noise) and (2) a paired bootstrap over the test examples of the seed-mean Δ of their hits (10,000 "
            'resamples: test-set noise), each Holm-corrected across the architectures of this table; verdict "better" '
            '(higher accuracy)/"worse" when both Holm p < 0.05, otherwise "no detectable difference" at this scale '
            "(`lit_vattn/experiments/stats.py`)"
            if probe
            else "- tests: per architecture, (1) a two-sided paired t-test over seeds of Δ (test NLL minus vanilla's on the same seed: "
            + (
                "training noise) and (2) a paired bootstrap over the test windows of the seed-mean Δ (10,000 resamples: test-set "
                "noise; windows of one document are not independent, so it is optimistic), each Holm-corrected across the "
                if clusters is None
                else f"training noise) and (2) a paired bootstrap over the test {clusters.name} ({len(set(clusters.of.values()))}; "
                f"each resample draws whole {clusters.name}, summing the seed-mean Δ of their windows; 10,000 resamples: "
                "test-set noise), each Holm-corrected across the "
            )
            + 'architectures of this table; verdict "better"/"worse" when both Holm p < 0.05 (the seed test alone for runs '
            'without per-window NLLs), otherwise "no detectable difference" at this scale (`lit_vattn/experiments/stats.py`)'
        ),
    ]
    if families:
        lines[-1] = lines[-1].replace(
            "each Holm-corrected across the architectures of this table", "each Holm-corrected within its family"
        )
        lines.append(
            "- comparison families, declared in the command before the runs, each Holm-corrected on its own: "
            + "; ".join(f"{name}: {', '.join(m)}" for name, m in families.items())
        )
    if failed:
        lines.append(
            "- **failed runs (never scored): "
            + "; ".join(f"{r['arch']} seed {r['seed']}: {r['failed']}" for r in failed)
            + "**"
        )
    columns = main_columns(unit_label, probe, "windows" if clusters is None else clusters.name)
    rows = main_rows(archs, by, base, failed, counts, unit, probe, clusters, families)
    lines += ["", *render(columns, rows)]
    if counts:
        lines += [
            "",
            "Count rows: unigram (add-one) and bigram (absolute discounting) models of the training split, "
            "scored on the same val/test targets as the runs (`lit_vattn/experiments/baselines.py`).",
        ]
    lines += control_lines(by, probe, clusters)
    lines += lr_rows
    budget = plot_budget(
        results,
        stem.with_name(stem.name + "-budget"),
        f"{args.modality}, preset {args.preset}",
        counts,
        "acc" if probe else "nll",
    )
    if budget:
        lines += [
            "",
            f"Budget curves (validation {'accuracy' if probe else 'NLL'} at log-spaced steps of every run, `--curve.points`; each method's paired "
            f"difference to vanilla against tokens seen, mean ± std over seeds): `{budget.name}.png`, `{budget.name}.csv`.",
        ]
        shared = plot_shared_lr_budget(
            sweep or [], stem.with_name(stem.name + "-budget-shared-lr"), f"{args.modality}, preset {args.preset}"
        )
        if shared:
            lines += [
                "",
                "The same curves from the lr sweep's runs, every method paired with vanilla at the same lr (one "
                f"panel per lr every method ran, the tuning seed only), so a gap is not read off two schedules: "
                f"`{shared.name}.png`, `{shared.name}.csv`.",
            ]
    lines += [
        "",
        f"Per-run numbers: `{stem.name}.csv`; training curves: `{stem.name}-loss.png`; run directories under `{args.runs}`"
        + (
            f"; each run's record (summaries and config: what this table reads) under `{args.records}`: "
            f"`{(getattr(args, 'command', None) or 'lit-vattn-reproduce').split()[0]} <the command's options> "
            f"--runs {args.records} --table-only` rebuilds it"
            if getattr(args, "records", None)
            else ""
        )
        + ".",
    ]
    write_text(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    summary = {
        "table": stem.name + ".md",
        "modality": args.modality,
        "preset": args.preset,
        "provenance": provenance_line,
        "lr": "tuned" if sweep else "shared",
        "columns": [[c.key, c.header] for c in columns],
        "rows": rows,
    }
    write_text(stem.with_suffix(".json"), json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    plot_curves(results, stem.with_name(stem.name + "-loss.png"), f"{args.modality}, preset {args.preset}")
    return stem.with_suffix(".md"), stem.with_suffix(".csv")


@dataclass(frozen=True)
class Column:
    """One column of a table: its key in a row (and in the table's JSON) and its markdown header."""

    key: str
    header: str


def main_columns(unit_label: str, probe: bool, resampled: str = "windows") -> list[Column]:
    return [
        Column("arch", "arch"),
        Column("runs", "runs"),
        Column("lr", "lr"),
        Column("params", "params"),
        Column("tokens_seen", "tokens seen"),
        Column("val_nll", "val NLL (nats/token)"),
        Column("test_nll", "test NLL (nats/token)"),
        Column("test_unit", f"test {unit_label}"),
        Column("delta", f"Δ test {'accuracy' if probe else 'NLL'} vs vanilla"),
        Column("delta_ci", "Δ 95 % interval (seeds)"),
        Column("p_seeds", "p seeds (paired t)"),
        Column("p_seeds_holm", "p seeds (Holm)"),
        Column("p_windows_holm", f"p {resampled} (bootstrap, Holm)"),  # the key names the column in every table's JSON
        Column("verdict", "verdict"),
        Column("tokens_per_sec", "tokens/s"),
        Column("peak_memory_gib", "peak mem (GiB)"),
    ]


def main_rows(
    archs, by, base, failed, counts, unit: str, probe: bool, clusters: Optional[Clusters] = None, families=None
) -> list[dict]:
    """The main table's rows, each cell formatted once: the markdown and the table's JSON both show these."""
    tests = family_tests(archs, by, base, probe, clusters, families)
    key = "test_acc" if probe else "test_nll"
    rows = []
    for a in archs:
        rs = by[a]
        n_failed = sum(r["arch"] == a for r in failed)
        runs = f"{len(rs)}/{len(rs) + n_failed}" + (" (failed: see above)" if n_failed else "")
        if not rs:
            cells = ["—", "—", "—", "failed", "failed", "failed", "—", "—", "—", "—", "—", "—", "—", "—"]
            rows.append(dict(zip([c.key for c in main_columns("", probe)], [a, runs, *cells])))
            continue
        p_raw, p_holm, p_boot, word = tests.get(a, (None, None, None, "—"))
        delta = [r[key] - base[r["seed"]][key] for r in rs if r["seed"] in base] if a != "vanilla" else []
        rows.append(
            {
                "arch": a,
                "runs": runs,
                "lr": lr_cell(rs),
                "params": f"{rs[0]['params'] / 1e6:.2f} M",
                "tokens_seen": f"{rs[0]['tokens_seen'] / 1e6:.2f} M",
                "val_nll": fmt([r["val_nll"] for r in rs]),
                "test_nll": fmt([r["test_nll"] for r in rs]),
                "test_unit": fmt([r[f"test_{unit}"] for r in rs], 3),
                "delta": fmt(delta) if delta else "—",
                "delta_ci": interval(delta),
                "p_seeds": pval(p_raw),
                "p_seeds_holm": pval(p_holm),
                "p_windows_holm": pval(p_boot),
                "verdict": word,
                "tokens_per_sec": fmt([r["tokens_per_sec"] for r in rs], 0),
                "peak_memory_gib": f"{max(r['peak_memory_gib'] for r in rs):.2f}",
            }
        )
    for c in counts or []:
        rows.append(
            {
                "arch": c["arch"],
                "runs": "count model",
                "lr": "—",
                "params": "—",
                "tokens_seen": f"{c['train_tokens'] / 1e6:.2f} M counted",
                "val_nll": f"{c['val_nll']:.4f}",
                "test_nll": f"{c['test_nll']:.4f}",
                "test_unit": f"{c['test_bits_per_unit']:.3f}",
                **dict.fromkeys(("delta", "delta_ci", "p_seeds", "p_seeds_holm", "p_windows_holm", "verdict"), "—"),
                "tokens_per_sec": "—",
                "peak_memory_gib": "—",
            }
        )
    return rows


def render(columns: list[Column], rows: list[dict]) -> list[str]:
    """A markdown table of ``rows`` in the order of ``columns``."""
    return [
        "| " + " | ".join(c.header for c in columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(r[c.key] for c in columns) + " |" for r in rows),
    ]


def interval(diffs: list[float]) -> str:
    """The 95 % Student-t interval over seeds of a paired difference's mean; — for fewer than two seeds."""
    from lit_vattn.experiments.stats import t_interval

    lo, hi = t_interval(diffs)
    return "—" if math.isnan(lo) else f"[{lo:+.4f}, {hi:+.4f}]"


def pval(v: Optional[float]) -> str:
    return "—" if v is None else (f"{v:.3f}" if v >= 0.001 else f"{v:.1e}")


def lr_cell(rs: list[dict]) -> str:
    lrs = sorted({r["lr"] for r in rs if r.get("lr") is not None})
    return ", ".join(f"{x:g}" for x in lrs) or "—"
