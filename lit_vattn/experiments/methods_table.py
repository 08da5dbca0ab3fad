"""One table "method x modality" from the per-modality NLL tables of one preset.

Reads ``results/<modality>-<preset>.json`` (the rows ``lit-vattn-reproduce`` rendered into that
table's markdown, as data) and copies, for
every architecture, its paired difference to vanilla in test NLL (mean ± std over seeds), the
number of finished seeds, the verdict of the table's stated test and, where that table chose a
learning rate per method, the chosen one; a modality whose table lacks an architecture (a control
run on one modality only) says so. Nothing is recomputed, so this table can never disagree with the tables
it summarises.

    python -m lit_vattn.experiments.methods_table --preset tiny --out results/methods-tiny.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from datamodules import modalities
from lit_vattn.arch.registry import default_request

MODALITIES = tuple(n for n, m in modalities().items() if not m.probe)  # the NLL modalities, by name
METHODS = default_request()  # the compared methods and the default controls; any other row is a control or a reading


def load(path: Path) -> tuple[dict[str, dict[str, str]], dict]:
    """{arch: row} of a table's JSON (count-model rows left out), and the JSON itself."""
    table = json.loads(path.read_text())
    return {r["arch"]: r for r in table["rows"] if r["runs"] != "count model"}, table


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--results", default="results")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    tables = {m: Path(args.results) / f"{m}-{args.preset}.json" for m in MODALITIES}
    parsed = {m: load(t) for m, t in tables.items() if t.is_file()}
    if not parsed:
        sys.exit(f"no results/<modality>-{args.preset}.json found under {args.results}: run lit-vattn-reproduce first")
    # the compared methods first, in the tables' order; then the controls (va-frozen, sla-far, ...)
    # that a table with --lrs and controls also holds, which the others mark "not run"
    archs = list(dict.fromkeys(a for rows, _ in parsed.values() for a in rows if "counts" not in a))
    archs = [a for a in archs if a in METHODS] + [a for a in archs if a not in METHODS]
    tuned = {m: table["lr"] == "tuned" for m, (_, table) in parsed.items()}
    lines = [
        f"# Every method against vanilla, preset `{args.preset}`",
        "",
        f"- command: `python -m lit_vattn.experiments.methods_table --preset {args.preset}{' --out ' + args.out if args.out else ''}`",
        "- cell: paired difference in test NLL to vanilla on the same seeds (nats per token; negative = lower "
        "NLL than vanilla), mean ± std over seeds, [finished seeds], and the verdict of the test stated in "
        "that table's header (n.d. = no detectable difference at this scale); tables made since the "
        "bootstrap landed require both the Holm-corrected paired t over seeds and the Holm-corrected "
        "paired bootstrap over test windows to pass at 0.05, older ones the t-test only; (lr x) = the "
        "learning rate chosen for that method on validation, where its table tuned one per method",
        "- sources (each with its own command, commit, date and hardware):",
    ]
    lines += [
        f"  - {m}: `results/{table['table']}` ({table['provenance']}; "
        + (
            "learning rate: each method's own, chosen on validation)"
            if tuned[m]
            else "one learning rate for every method)"
        )
        for m, (_, table) in parsed.items()
    ]
    lines += [f"  - {m}: no table yet" for m in MODALITIES if m not in parsed]
    lines += ["", "| method | " + " | ".join(MODALITIES) + " |", "|---|" + "---|" * len(MODALITIES)]
    for a in archs:
        cells = []
        for m in MODALITIES:
            row = parsed.get(m, ({}, {}))[0].get(a)
            if row is None:
                cells.append("not run")
                continue
            delta = row.get("delta", "—")
            verdict = row.get("verdict", "—").replace("no detectable difference", "n.d.")
            runs = row.get("runs", "").split("/")[0]
            lr = f" (lr {row['lr']})" if tuned[m] and row.get("lr") else ""
            cells.append(f"—{lr}" if a == "vanilla" else f"{delta} [{runs}] {verdict}{lr}")
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
