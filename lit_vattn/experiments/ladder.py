"""``lit-vattn-ladder``: does a method's gain grow or vanish with scale?

The rungs are the presets ``configs/reproduce/ladder-<k>.yaml``: shapes of growing size, each
trained on ``TOKENS_PER_PARAM`` tokens per non-embedding parameter (``rung_steps``; a test checks
every preset against the rule). For each rung the ladder trains the requested methods x seeds
through ``lit-vattn-reproduce``'s runner (same run directories, records and per-rung table), then
fits each method's test NLL against its size and compares the fits (``lit_vattn.experiments.scaling``).

Learning rates, a stated rule: at a tuned rung (``--tune-rungs``, default every rung) each method's
lr is chosen on validation over ``--lrs`` on ``--lr-seed``, a seed that is not in the table, the
grid widened past an edge choice (``records.tune``); a rung that is not tuned takes each method's
lr of the nearest tuned rung below it, and at the top such rung ``--check-archs`` are also trained
at half and twice that lr on the tuning seed, so the table says whether the carried lr was still
the best of the three.

    lit-vattn-ladder --modality text --rungs 1,2,3 --archs vanilla,va,va-frozen,sla,las --seeds 0,1,2 \\
        --lr-seed 100 --lrs 3e-3,6e-3,1.2e-2 --widen 2 --tune-rungs 1,2,3 --parallel 2 --records results/records
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lit_vattn.arch.registry import CONFIG_DIR

TOKENS_PER_PARAM = 20
"""Training tokens per non-embedding parameter at every rung (about the compute-optimal ratio of
Hoffmann et al. 2022). The shipped rungs stay within 4 epochs of the embedded text's training split
(6.74 M tokens with the 2,048-id BPE: ladder-5's 25.6 M tokens are 3.8 epochs); each rung's table
states its epochs."""
PRESET = re.compile(r"ladder-(\d+)$")


def non_embedding_params(n_layer: int, n_head: int, d_model: int, **shape) -> int:
    """Every parameter of the vanilla decoder of this shape but the token embedding and the output
    head (the vocabulary's matrices): the N of the scaling fits, the same for every method of a rung
    (a method's own weights are its cost, reported in the per-rung tables, not a bigger rung)."""
    import torch

    from lit_vattn.model.config import GPTConfig
    from lit_vattn.model.decoder import GPT

    with torch.device("meta"):  # shapes only: no memory, no init
        net = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, d_model=d_model, **shape), vocab_size=64)
    return sum(p.numel() for p in net.parameters()) - net.embed.weight.numel() - net.head.weight.numel()


def rung_steps(n_params: int, batch_size: int, seq_len: int, ratio: int = TOKENS_PER_PARAM) -> int:
    """Optimizer steps that give ``ratio`` tokens per non-embedding parameter at this batch shape."""
    return round(ratio * n_params / (batch_size * seq_len))


@dataclass(frozen=True)
class Rung:
    """One rung, as its preset file states it."""

    k: int
    preset: str
    n_layer: int
    n_head: int
    d_model: int
    seq_len: int
    batch_size: int
    steps: int

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_size * self.seq_len

    @property
    def params(self) -> int:
        return non_embedding_params(self.n_layer, self.n_head, self.d_model, max_seq_len=self.seq_len)

    @property
    def shape(self) -> str:
        return f"{self.n_layer} x {self.d_model}"


def rungs(config_dir: Path = CONFIG_DIR) -> dict[int, Rung]:
    """k -> the rung of ``configs/reproduce/ladder-<k>.yaml``."""
    import yaml

    out = {}
    for path in (Path(config_dir) / "reproduce").glob("ladder-*.yaml"):
        m = PRESET.match(path.stem)
        if not m:
            continue
        c = yaml.safe_load(path.read_text())
        shape, data, trainer = c["model"]["init_args"]["config"], c["data"]["init_args"], c["trainer"]
        out[int(m.group(1))] = Rung(
            k=int(m.group(1)),
            preset=path.stem,
            n_layer=shape["n_layer"],
            n_head=shape["n_head"],
            d_model=shape["d_model"],
            seq_len=data["seq_len"],
            batch_size=data["batch_size"],
            steps=trainer["max_steps"],
        )
    return dict(sorted(out.items()))


def parse_ints(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"{flag} {text!r} must be comma-separated integers, e.g. 1,2,3") from None


def run_rung(args, rung: Rung, chosen_below: Optional[dict], tuned: bool) -> dict:
    """Train (or with --table-only read) one rung: its lr sweep or carried lrs, its table seeds, the
    top-rung check; write its table. Returns {"rung", "results", "sweep", "chosen", "check", "lr_rule"}."""
    from datamodules import modalities
    from lit_vattn.experiments.records import check_same_override, tune
    from lit_vattn.experiments.reproduce import (
        Runner,
        check_one_data,
        check_override_keeps_methods,
        check_recorded_data,
        keep_recorded_data,
        restore_recorded_data,
        table_clusters,
        table_counts,
    )
    from lit_vattn.experiments.scaling import families
    from lit_vattn.experiments.tables import write_tables

    a = copy.copy(args)
    a.preset, a.out = rung.preset, str(Path(args.out) / f"ladder-{args.modality}")
    runner = Runner(a)
    restore_recorded_data(a)
    check_recorded_data(a)
    check_override_keeps_methods(args.archs, a.override, runner.config_dir)
    check_same_override(runner.table_dirs, args.archs, a.override, made_with=not a.table_only)
    t0 = time.time()
    sweep, check = [], []
    if tuned:
        sweep, chosen = tune(runner.run_jobs, args.archs, args.lr_seed, args.lrs, args.widen)
        rule = None
    else:
        if chosen_below is None:
            raise SystemExit(
                f"rung {rung.k} is not in --tune-rungs and no tuned rung lies below it: tune the lowest rung "
                "(--tune-rungs), whose lrs the rungs above it carry"
            )
        chosen = dict(chosen_below)
        rule = "each method's lr of the nearest tuned rung below (carried, not tuned here)"
    results = runner.run_jobs([(m, s, chosen[m]) for s in args.seeds for m in args.archs if chosen[m] is not None])
    results += [r for r in sweep if chosen[r["arch"]] is None]  # every lr failed: the table says so
    if not tuned and rung.k == args.top and args.check_archs:
        check = runner.run_jobs(
            [(m, args.lr_seed, float(f"{chosen[m] * f:.6g}")) for m in args.check_archs for f in (0.5, 1.0, 2.0)]
        )
    finished = [r for r in results if not r.get("failed")]
    counts = table_counts(a, runner, finished) if finished else None
    if finished:
        check_one_data(finished, counts)
        keep_recorded_data(a, finished)
    clusters = table_clusters(a, runner, finished) if finished and not modalities()[args.modality].probe else None
    wall = sum(r.get("wall_seconds", 0.0) for r in results) if args.table_only else time.time() - t0
    if finished:
        write_tables(a, results, wall, counts, sweep, lr_rule=rule, clusters=clusters, families=families(args.archs))
    return {"rung": rung, "results": results, "sweep": sweep, "chosen": chosen, "check": check, "lr_rule": rule}


def main(argv: Optional[list[str]] = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modality", default="text")
    p.add_argument("--rungs", default="1,2,3", help="which rungs (configs/reproduce/ladder-<k>.yaml), e.g. 1,2,3")
    p.add_argument("--archs", default="vanilla,va,va-frozen,sla,las", help="methods and controls; vanilla is required")
    p.add_argument("--seeds", default="0,1,2", help="the table's seeds")
    p.add_argument("--lr-seed", type=int, default=100, help="the seed every lr choice is made on; not one of --seeds")
    p.add_argument("--lrs", default="3e-3,6e-3,1.2e-2", help="the lr grid of a tuned rung")
    p.add_argument("--widen", type=int, default=2, help="values added past an edge choice, per side (records.tune)")
    p.add_argument("--tune-rungs", default=None, help="rungs whose lrs are tuned (default: every rung of --rungs)")
    p.add_argument(
        "--check-archs",
        default="vanilla",
        help="at the top rung, when it is not tuned: methods also trained at half and twice their carried lr "
        "on --lr-seed (empty: no check)",
    )
    p.add_argument("--parallel", type=int, default=1, help="runs at once (reproduce --parallel)")
    p.add_argument("--runs", default="runs/reproduce", help="where run directories go")
    p.add_argument("--records", default=None, help="keep each run's record here (reproduce --records)")
    p.add_argument("--out", default="results", help="ladder-<modality>.md/.csv/.json/.png and the per-rung tables")
    p.add_argument("--config-dir", default=str(CONFIG_DIR))
    p.add_argument("--table-only", action="store_true", help="train nothing: read the finished runs (or records)")
    p.add_argument(
        "--find-documents", action="store_true", help="with --table-only: read the test documents from the data"
    )
    p.add_argument("--boot", type=int, default=1000, help="bootstrap resamples of the seeds for the fits' intervals")
    p.add_argument("--override", nargs=argparse.REMAINDER, default=[], help="passed to every lit-vattn call")
    args = p.parse_args(argv)
    from datamodules import modalities
    from lit_vattn.experiments.reproduce import parse_lrs, parse_request

    if args.modality not in modalities():
        raise SystemExit(f"--modality {args.modality!r}: choose from {', '.join(sorted(modalities()))}")
    request = argparse.Namespace(archs=args.archs, seeds=args.seeds, modality=args.modality)
    args.archs, args.seeds = parse_request(request, Path(args.config_dir))
    if "vanilla" not in args.archs:
        raise SystemExit("--archs must include vanilla: every fit is compared with vanilla's")
    args.archs = ["vanilla"] + [m for m in args.archs if m != "vanilla"]
    if args.lr_seed in args.seeds:
        raise SystemExit(
            f"--lr-seed {args.lr_seed} is one of --seeds {args.seeds}: choose a seed the table does not use"
        )
    args.lrs = parse_lrs(args.lrs)
    available = rungs(Path(args.config_dir))
    ks = parse_ints(args.rungs, "--rungs")
    unknown = [k for k in ks if k not in available]
    if unknown or not ks:
        raise SystemExit(f"--rungs {args.rungs!r}: no preset ladder-<k>.yaml for {unknown}; rungs: {sorted(available)}")
    tuned = set(ks if args.tune_rungs is None else parse_ints(args.tune_rungs, "--tune-rungs"))
    args.check_archs = [m for m in args.check_archs.split(",") if m.strip()]
    bad = [m for m in args.check_archs if m not in args.archs]
    if bad:
        raise SystemExit(f"--check-archs {', '.join(bad)} not in --archs")
    args.top, args.preset, args.two_processes, args.no_baselines = max(ks), None, False, False
    args.command = "lit-vattn-ladder " + " ".join(sys.argv[1:] if argv is None else argv)
    out = []
    chosen = None
    for k in sorted(ks):
        done = run_rung(args, available[k], chosen, k in tuned)
        chosen = done["chosen"]
        out.append(done)
    from lit_vattn.experiments.scaling import write_ladder

    md = write_ladder(args, out)
    print(md.read_text())
    return out


def console() -> None:
    results = main()
    sys.exit(1 if any(r.get("failed") for d in results for r in d["results"]) else 0)


if __name__ == "__main__":
    console()
