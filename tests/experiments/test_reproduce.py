"""lit-vattn-reproduce end to end at the tiny preset, and lit-vattn-analyze on its checkpoints."""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT

from lit_vattn.arch.registry import control_of, default_request
from lit_vattn.experiments import records, reproduce, tables
from lit_vattn.tools import analyze, loader

SHORT = [
    "--override",
    "--trainer.max_steps",
    "8",
    "--trainer.val_check_interval",
    "8",
    "--trainer.log_every_n_steps",
    "1",
    "--trainer.limit_val_batches",
    "4",
    "--trainer.limit_test_batches",
    "4",
    "--curve.points",
    "3",
    "--curve.first_step",
    "2",
    "--curve.max_batches",
    "4",
]


@pytest.fixture(scope="module")
def table(tmp_path_factory, shard_cache, bpe_text):
    tmp = tmp_path_factory.mktemp("repro")
    args = [
        "--modality",
        "text",
        "--preset",
        "tiny",
        "--archs",
        "vanilla,va",
        "--seeds",
        "0,1",
        "--runs",
        str(tmp / "runs"),
        "--out",
        str(tmp / "results"),
        *SHORT,
    ]
    results = reproduce.main(args)
    return tmp, args, results


def test_table_written_and_equal_to_the_runs_own_logs(table):
    tmp, _, results = table
    # two archs x two seeds is a partial table: it never takes the canonical text-tiny name
    assert not (tmp / "results/text-tiny.md").exists()
    md = (tmp / "results/text-tiny-vanilla-va-seeds0-1.md").read_text()
    assert "lit-vattn-reproduce" in md and "commit:" in md and "hardware:" in md and "wall time" in md
    assert "| vanilla |" in md and "| va |" in md and "bits/byte" in md
    # the count floor: a bigram of the training split beats a unigram on the same targets
    count = {line.split("|")[1].strip(): float(line.split("|")[7]) for line in md.splitlines() if "(counts)" in line}
    assert set(count) == {"unigram (counts)", "bigram (counts)"}
    assert count["bigram (counts)"] < count["unigram (counts)"]
    assert (tmp / "results/text-tiny-vanilla-va-seeds0-1-loss.png").stat().st_size > 1000
    assert "paired t-test over seeds" in md and "Holm" in md
    va_row = next(line for line in md.splitlines() if line.startswith("| va |")).split("|")
    assert va_row[2].strip() == "2/2" and va_row[14].strip() in ("better", "worse", "no detectable difference")
    assert float(va_row[3]) == 3e-3 and "learning rate: 0.003 for every method" in md  # the preset's lr, not tuned
    assert 0 < float(va_row[13]) <= 1  # the bootstrap over test windows ran on the recorded per-window NLLs
    rows = list(csv.DictReader(open(tmp / "results/text-tiny-vanilla-va-seeds0-1.csv")))
    assert sorted((r["arch"], r["seed"]) for r in rows) == [
        ("va", "0"),
        ("va", "1"),
        ("vanilla", "0"),
        ("vanilla", "1"),
    ]
    for r in rows:
        run = tmp / "runs/text-tiny" / r["arch"] / f"seed{r['seed']}"
        fit = [x for x in csv.DictReader(open(run / "fit/metrics.csv")) if x.get("val/nll")]
        test = [x for x in csv.DictReader(open(run / "test/metrics.csv")) if x.get("test/nll")]
        assert float(r["val_nll"]) == float(fit[-1]["val/nll"])
        assert float(r["test_nll"]) == float(test[-1]["test/nll"])
        assert float(r["test_bits_per_byte"]) == float(test[-1]["test/bits_per_byte"])
        windows = json.loads((run / "test/summary.json").read_text())["test_windows"]  # every test window, once
        assert sum(windows["nll"]) / sum(windows["tokens"]) == pytest.approx(float(r["test_nll"]), rel=1e-5)
        assert int(r["tokens_seen"]) == 8 * 8 * 128  # steps x batch x seq_len of the tiny preset
        assert int(r["steps"]) == 8
    # seeds differ, architectures differ, vanilla's params are the smallest
    vals = {(r["arch"], r["seed"]): float(r["test_nll"]) for r in rows}
    assert vals[("vanilla", "0")] != vals[("vanilla", "1")] and vals[("vanilla", "0")] != vals[("va", "0")]
    assert int(next(r for r in rows if r["arch"] == "vanilla")["params"]) < int(
        next(r for r in rows if r["arch"] == "va")["params"]
    )


def test_budget_curves_pair_each_method_with_vanilla_over_tokens(table):
    tmp, _, results = table
    rows = list(csv.DictReader(open(tmp / "results/text-tiny-vanilla-va-seeds0-1-budget.csv")))
    assert [(r["arch"], int(r["step"]), int(r["tokens"])) for r in rows] == [
        (a, s, s * 8 * 128) for a in ("vanilla", "va") for s in (2, 4, 8)
    ]
    assert (tmp / "results/text-tiny-vanilla-va-seeds0-1-budget.png").stat().st_size > 1000
    by = {(r["arch"], r["seed"]): r for r in results}
    for r in rows:
        curves = {
            s: json.loads((tmp / f"runs/text-tiny/{r['arch']}/seed{s}/fit/summary.json").read_text())["curve"]
            for s in (0, 1)
        }
        at = {s: next(p["nll"] for p in c if p["step"] == int(r["step"])) for s, c in curves.items()}
        assert float(r["val_nll_mean"]) == pytest.approx(np.mean(list(at.values())), abs=1e-6)
        if r["arch"] == "va":
            van = {
                s: next(
                    p["nll"]
                    for p in json.loads((tmp / f"runs/text-tiny/vanilla/seed{s}/fit/summary.json").read_text())["curve"]
                    if p["step"] == int(r["step"])
                )
                for s in (0, 1)
            }
            assert float(r["delta_mean"]) == pytest.approx(np.mean([at[s] - van[s] for s in (0, 1)]), abs=1e-6)
        if int(r["step"]) == 8:  # the last point scores the validation's batches with the final weights
            assert float(r["val_nll_mean"]) == pytest.approx(
                np.mean([by[(r["arch"], s)]["val_nll"] for s in (0, 1)]), rel=1e-5
            )
    assert "Budget curves" in (tmp / "results/text-tiny-vanilla-va-seeds0-1.md").read_text()


def test_learning_rate_sweep_chooses_on_validation_and_trains_the_other_seeds_there(table, tmp_path, capsys):
    tmp, args, _ = table
    cut = args.index("--override")
    sweep = [
        "--modality",
        "text",
        "--preset",
        "tiny",
        "--archs",
        "vanilla",
        "--seeds",
        "0,1",
        "--lrs",
        "1e-2,1e-4",
        "--runs",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "out"),
        "--no-baselines",
        *args[cut:],
    ]
    results = reproduce.main(sweep)
    root = tmp_path / "runs/text-tiny/vanilla"
    val = {lr: json.loads((root / f"lr{lr:g}/seed0/done.json").read_text())["val_nll"] for lr in (1e-4, 1e-2)}
    chosen = min(val, key=val.get)
    assert chosen == 1e-2  # 8 steps at 1e-4 barely move the model
    assert (root / "lr0.01/seed1/done.json").exists() and not (root / "lr0.0001/seed1").exists()
    assert sorted((r["seed"], r["lr"]) for r in results) == [(0, chosen), (1, chosen)]
    assert "lr: 0.01" in (root / "lr0.01/seed1/fit/config.yaml").read_text()
    md = (tmp_path / "out/text-tiny-vanilla-seeds0-1.md").read_text()
    assert "chosen from {0.0001, 0.01} by the lowest final validation NLL of its seed-0 run" in md
    assert f"| vanilla | {val[1e-4]:.4f} | {val[1e-2]:.4f}* | 0.01 (edge) |" in md
    assert next(line for line in md.splitlines() if line.startswith("| vanilla | 2/2")).split("|")[3].strip() == "0.01"
    capsys.readouterr()
    again = reproduce.main([*sweep[: -len(args[cut:])], "--table-only"])
    assert [r["test_nll"] for r in again] == [r["test_nll"] for r in results]
    assert (tmp_path / "out/text-tiny-vanilla-seeds0-1.md").read_text().split("- wall time")[1].split("\n", 1)[
        1
    ] == md.split("- wall time")[1].split("\n", 1)[1]


def test_a_learning_rate_chosen_on_a_held_out_seed_leaves_every_table_seed_unchosen(table, tmp_path):
    tmp, args, _ = table
    cut = args.index("--override")
    common = ["--modality", "text", "--preset", "tiny", "--archs", "vanilla", "--seeds", "0,1", "--lrs", "1e-2,1e-4"]
    out = ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--no-baselines", *args[cut:]]
    results = reproduce.main([*common, "--lr-seed", "7", *out])
    root = tmp_path / "runs/text-tiny/vanilla"
    assert (root / "lr0.0001/seed7/done.json").exists() and (root / "lr0.01/seed7/done.json").exists()
    assert sorted((r["seed"], r["lr"]) for r in results) == [(0, 0.01), (1, 0.01)]  # seed 7 is in no row
    md = (tmp_path / "out/text-tiny-vanilla-seeds0-1.md").read_text()
    assert "NLL of its run on seed 7, a seed not in the table" in md
    assert "Learning-rate sweep (seed 7" in md
    with pytest.raises(SystemExit, match="--lr-seed and --widen"):
        reproduce.main([*common[:-2], "--lr-seed", "7", *out])


def test_the_bootstrap_resamples_documents_where_the_data_mark_them(table):
    tmp, _, _ = table
    clusters = json.loads((tmp / "runs/text-tiny/clusters.json").read_text())
    assert clusters["name"] == "documents" and len(set(clusters["windows"].values())) > 1
    md = (tmp / "results/text-tiny-vanilla-va-seeds0-1.md").read_text()
    assert "p documents (bootstrap, Holm)" in md and "a paired bootstrap over the test documents" in md


def test_learning_rate_choice_ignores_failed_runs_and_bad_grids_are_refused():
    ok = lambda lr, v: {"arch": "va", "seed": 0, "lr": lr, "val_nll": v}  # noqa: E731
    assert (
        reproduce.choose_lr([ok(1e-3, 5.0), ok(3e-3, 4.9), {"arch": "va", "seed": 0, "lr": 1e-2, "failed": "diverged"}])
        == 3e-3
    )
    assert reproduce.choose_lr([{"arch": "va", "seed": 0, "lr": 1e-2, "failed": "diverged"}]) is None
    for bad in ("3e-3", "1e-3,x", "1e-3,-1"):
        with pytest.raises(SystemExit, match="--lrs"):
            reproduce.parse_lrs(bad)


def test_controls_are_tested_against_their_own_method(tmp_path):
    """A control (va-frozen, sla-far, ...) gets a row against its own method, not only against
    vanilla: Δ on the same seeds, the paired t and its Holm correction across the controls, and a
    control whose method is absent from the table has no row. Every pair names shipped configs."""
    from scipy import stats as sps

    arch_dir = ROOT / "configs/arch"
    assert all(
        (arch_dir / "controls" / f"{c}.yaml").is_file() and (arch_dir / f"{m}.yaml").is_file()
        for c, m in control_of().items()
    )

    def runs(arch, nlls):  # run_dir without a test summary: the seed test alone
        return [
            {"arch": arch, "seed": s, "test_nll": x, "run_dir": str(tmp_path / arch / str(s))}
            for s, x in enumerate(nlls)
        ]

    by = {
        "vanilla": runs("vanilla", [5.0, 5.1, 5.2]),
        "va": runs("va", [4.80, 4.91, 5.00]),
        "va-frozen": runs("va-frozen", [4.83, 4.93, 5.04]),
        "va-nonorm": runs("va-nonorm", [5.30, 5.35, 5.50]),
        "sla-far": runs("sla-far", [4.9, 5.0, 5.1]),
    }  # no sla: no row
    text = "\n".join(tables.control_lines(by))
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in text.splitlines()
        if line.startswith("| va-")
    }
    assert set(rows) == {"va-frozen", "va-nonorm"} and "sla-far" not in text
    frozen_p = sps.ttest_rel([4.83, 4.93, 5.04], [4.80, 4.91, 5.00]).pvalue
    nonorm_p = sps.ttest_rel([5.30, 5.35, 5.50], [4.80, 4.91, 5.00]).pvalue
    assert rows["va-frozen"][0] == "va" and rows["va-frozen"][1] == "0.0300 ± 0.0100"
    half = sps.t.ppf(0.975, 2) * 0.01 / 3**0.5  # the 95 % t interval of the mean of three differences
    assert rows["va-frozen"][2] == f"[{0.03 - half:+.4f}, {0.03 + half:+.4f}]"
    assert float(rows["va-frozen"][3]) == pytest.approx(frozen_p, abs=1e-3)
    assert float(rows["va-nonorm"][3]) == pytest.approx(nonorm_p, abs=1e-3)
    # Holm over the two: the smaller p doubled, the larger kept (or raised to the smaller's)
    lo, hi = sorted([frozen_p, nonorm_p])
    holm = {frozen_p: None, nonorm_p: None}
    holm[lo], holm[hi] = min(1, 2 * lo), max(min(1, 2 * lo), hi)
    assert float(rows["va-frozen"][4]) == pytest.approx(holm[frozen_p], abs=1e-3)
    assert rows["va-nonorm"][6] == ("worse" if holm[nonorm_p] < 0.05 else "no detectable difference")
    assert tables.control_lines({"vanilla": by["vanilla"], "va": by["va"]}) == []


def test_rerun_skips_finished_runs(table, capsys):
    tmp, args, results = table
    done = tmp / "runs/text-tiny/vanilla/seed0/done.json"
    mtime = done.stat().st_mtime_ns
    again = reproduce.main(args)
    assert done.stat().st_mtime_ns == mtime
    assert capsys.readouterr().out.count("[skip]") == 4
    assert [r["test_nll"] for r in again] == [r["test_nll"] for r in results]


def test_a_rerun_with_other_settings_is_refused_before_training(table, capsys):
    """The finished runs were made at mix_lr_mult 1: skipping (or resuming) them under an --override of
    10 would put their scores under another model's name."""
    tmp, args, _ = table
    with pytest.raises(
        SystemExit, match=r"4 run\(s\) already there .*mix_lr_mult 10, e.g. .*seed0: made with --override --trainer"
    ):
        reproduce.main([*args, "--model.init_args.mix_lr_mult", "10"])
    assert "[train]" not in capsys.readouterr().out


def test_an_override_may_not_change_what_a_methods_own_config_sets():
    """Frozen VA is mix_lr_mult 0: an override of it would train VA under the control's name."""
    config_dir = ROOT / "configs"
    reproduce.check_override_keeps_methods(["va", "va-frozen"], ["--model.init_args.lr", "6e-3"], config_dir)
    reproduce.check_override_keeps_methods(["va"], ["--model.init_args.mix_lr_mult", "10"], config_dir)
    with pytest.raises(
        SystemExit, match=r"--archs va-frozen: its config .*va-frozen.yaml sets model.init_args.mix_lr_mult: 0.0"
    ):
        reproduce.check_override_keeps_methods(["va", "va-frozen"], ["--model.init_args.mix_lr_mult", "1"], config_dir)


def test_fit_and_test_in_one_process_record_what_two_processes_record(table, tmp_path):
    tmp, args, results = table
    again = reproduce.main(
        ["--modality", "text", "--preset", "tiny", "--archs", "va", "--seeds", "1", "--two-processes"]
        + ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "results"), *SHORT]
    )
    first = next(r for r in results if r["arch"] == "va" and r["seed"] == 1)
    keys = ("val_nll", "test_nll", "params", "tokens_seen", "steps")
    assert {k: again[0][k] for k in keys} == {k: first[k] for k in keys}
    run = tmp_path / "runs/text-tiny/va/seed1"
    assert (run / "fit.log").is_file() and (run / "test.log").is_file()
    assert (tmp / "runs/text-tiny/va/seed1/run.log").is_file()


def test_fit_then_test_needs_exactly_one_separator():
    from lit_vattn.experiments.fit_then_test import split

    assert split(["--config", "a.yaml", "--then", "--ckpt_path", "x"]) == (["--config", "a.yaml"], ["--ckpt_path", "x"])
    with pytest.raises(SystemExit, match="exactly one --then"):
        split(["--config", "a.yaml"])


def test_console_scripts_exit_zero(table):
    """setuptools' wrapper does sys.exit(func()): a returned list would exit 1 after a success."""
    import importlib
    import inspect
    import re
    import subprocess
    import sys

    toml = (ROOT / "pyproject.toml").read_text()
    section = toml.split("[project.scripts]")[1].split("\n[")[0]
    scripts = dict(re.findall(r'^(\S+) = "(\S+)"', section, re.M))
    # every entry of the section parsed (none skipped by the pattern)
    assert scripts["lit-vattn-reproduce"] == "lit_vattn.experiments.reproduce:console"
    assert len(scripts) == section.count(" = ")
    for name, target in scripts.items():
        module, func = target.split(":")
        ret = inspect.signature(getattr(importlib.import_module(module), func)).return_annotation
        assert ret in (None, "None"), f"{name} -> {target} returns {ret}"
    tmp, args, _ = table
    code = f"import sys; from lit_vattn.experiments.reproduce import console; sys.argv = ['lit-vattn-reproduce', *{args!r}]; sys.exit(console())"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.count("[skip]") == 4


def test_unfinished_run_resumes_from_its_checkpoint(table, capsys):
    tmp, args, _ = table
    run = tmp / "runs/text-tiny/va/seed1"
    (run / "done.json").unlink()
    reproduce.main(args)
    out = capsys.readouterr().out
    assert "[resume] va seed 1" in out and out.count("[skip]") == 3
    assert json.loads((run / "done.json").read_text())["steps"] == 8


def test_unknown_arch_or_preset_fails_before_training(tmp_path):
    arch = ROOT / "configs/arch"
    stems = sorted(p.stem for p in [*arch.glob("*.yaml"), *arch.glob("controls/*.yaml")])
    with pytest.raises(SystemExit, match="unknown nope.*choose from: " + ", ".join(stems) + "$"):
        reproduce.main(["--modality", "text", "--archs", "vanilla,nope", "--runs", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="huge"):
        reproduce.main(["--modality", "text", "--preset", "huge", "--runs", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_analysis_depth_maps_and_logit_lens_on_a_tiny_checkpoint(table):
    tmp, _, _ = table
    ckpt = tmp / "runs/text-tiny/va/seed0/fit/checkpoints/last.ckpt"
    out = tmp / "analysis"
    written = analyze.main(["all", "--ckpt_path", str(ckpt), "--batches", "3", "--out", str(out)])
    names = {Path(w).name for w in written}
    assert {"depth_weights.png", "depth_weights.csv", "logit_lens.png", "logit_lens.csv"} <= names
    rows = list(csv.reader(open(out / "depth_weights.csv")))
    assert rows[0][:2] == ["row", "x0"] and len(rows) == 1 + 4  # 4 blocks x (x0, o1..o4)
    weights = [[float(v) for v in r[1:]] for r in rows[1:]]
    for i, w in enumerate(weights):
        assert sum(w) == pytest.approx(1.0, abs=1e-4) and all(v == 0 for v in w[i + 1 :])
    lens = list(csv.DictReader(open(out / "logit_lens.csv")))
    assert [r["state"] for r in lens] == ["in0", "in1", "in2", "in3", "readout"]  # the states VA consumes
    assert float(lens[-1]["top1_agreement_with_output"]) == pytest.approx(1.0)
    assert all(float(r["nll"]) > 0 for r in lens)


def test_analysis_of_vanilla_has_a_logit_lens_but_no_depth_map(table):
    tmp, _, _ = table
    ckpt = tmp / "runs/text-tiny/vanilla/seed0/fit/checkpoints/last.ckpt"
    written = analyze.main(["all", "--ckpt_path", str(ckpt), "--batches", "2", "--out", str(tmp / "an-vanilla")])
    assert {Path(w).name for w in written} == {"logit_lens.png", "logit_lens.csv"}
    with pytest.raises(SystemExit, match="no separable sources"):
        analyze.main(["ablation", "--ckpt_path", str(ckpt), "--batches", "2", "--out", str(tmp / "an-vanilla")])


def test_ablation_removes_each_source_and_scores_it_on_real_batches(table, tmp_path):
    """SLA with every skip block ablated is vanilla with the same weights (SLA adds none): the
    ablation's "all" row equals that model's NLL on the same batches."""
    from lit_vattn import GPTConfig
    from lit_vattn.arch import SkipLayerAttention
    from lit_vattn.train.module import LanguageModel

    tmp, _, _ = table
    _, dm = loader.load(str(tmp / "runs/text-tiny/vanilla/seed0/fit/checkpoints/last.ckpt"))
    cfg = GPTConfig(n_layer=4, n_head=4, d_model=32, max_seq_len=128)
    torch.manual_seed(0)
    sla = LanguageModel(cfg, SkipLayerAttention(), vocab_size=dm.vocab_size).eval()
    van = LanguageModel(cfg, None, vocab_size=dm.vocab_size).eval()
    van.load_state_dict(sla.state_dict())
    written = analyze.ablation(sla, dm, 2, tmp_path, "sla")
    rows = list(csv.DictReader(open(tmp_path / "ablation.csv")))
    assert [r["removed"] for r in rows] == ["none", "block1", "block2", "block3", "all"] and len(written) == 2
    assert float(rows[0]["nll"]) == pytest.approx(analyze._val_nll(sla, dm, 2)[0], rel=1e-6)
    assert float(rows[-1]["nll"]) == pytest.approx(analyze._val_nll(van, dm, 2)[0], rel=1e-5)
    assert float(rows[-1]["delta_nll"]) == pytest.approx(float(rows[-1]["nll"]) - float(rows[0]["nll"]), abs=1e-6)


def test_a_multi_gpu_fsdp_run_config_loads_on_one_cpu_for_analysis(table, tmp_path):
    """Analysis and the count rows rebuild a run from its config.yaml; one made for FSDP on GPUs
    across nodes must load on a login node's CPU (Lightning refuses FSDP without a GPU)."""
    import yaml

    from lit_vattn.train.cli import from_run_config

    runs, _, _ = table
    cfg = yaml.safe_load((runs / "runs/text-tiny/vanilla/seed0/fit/config.yaml").read_text())
    cfg["trainer"].update(yaml.safe_load((ROOT / "configs/trainer/fsdp.yaml").read_text())["trainer"])
    cfg["trainer"]["num_nodes"] = 4
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cli = from_run_config(path)
    assert type(cli.trainer.strategy).__name__ == "SingleDeviceStrategy"
    assert cli.trainer.num_devices == 1 and cli.trainer.num_nodes == 1 and cli.trainer.precision == "32-true"
    assert cli.model.hparams.vocab_size == cli.datamodule.vocab_size


def test_table_only_rebuilds_the_table_from_copied_summaries(table, tmp_path):
    """Runs made on another machine come back as run directories without checkpoints; the table
    is rebuilt from their summaries (and the count rows saved beside them), training nothing."""
    import shutil

    tmp, args, results = table
    copy, out = tmp_path / "copied", tmp_path / "out"
    shutil.copytree(tmp / "runs", copy, ignore=shutil.ignore_patterns("*.ckpt"))
    cut = args.index("--override")
    moved = [str(copy) if a == str(tmp / "runs") else str(out) if a == str(tmp / "results") else a for a in args[:cut]]
    again = reproduce.main([*moved, "--table-only", *args[cut:]])
    assert [r["test_nll"] for r in again] == [r["test_nll"] for r in results]
    md = (out / "text-tiny-vanilla-va-seeds0-1.md").read_text()
    assert "bigram (counts)" in md and "epochs over the training split" in md
    assert not list(copy.glob("**/*.ckpt"))
    shutil.rmtree(copy / "text-tiny" / "va" / "seed1")
    with pytest.raises(SystemExit, match="va seed 1 has no finished summary"):
        reproduce.main([*moved, "--table-only", *args[cut:]])


def test_records_carry_a_table_to_a_fresh_machine(table, tmp_path, capsys):
    """--records keeps each run's record and the table's counts and document groups (what a table
    reads; no checkpoint, no log). On a machine with none of the run directories, the same command with
    the same --records trains nothing and writes the same table; --table-only reads the records directly."""
    tmp, args, results = table
    cut = args.index("--override")
    rec, out = tmp_path / "records", tmp_path / "out"
    head = [str(out) if a == str(tmp / "results") else a for a in args[:cut]]
    reproduce.main([*head, "--records", str(rec), *args[cut:]])  # the fixture's runs, finished: kept
    assert capsys.readouterr().out.count("[skip]") == 4
    kept = sorted(str(f.relative_to(rec)) for f in rec.rglob("*") if f.is_file())
    runs = [f"text-tiny/{a}/seed{s}" for a in ("va", "vanilla") for s in (0, 1)]
    assert kept == sorted(
        ["text-tiny/counts.json", f"text-tiny/{records.CLUSTERS}"]
        + [f"{r}/{f}" for r in runs for f in records.FILES if f != "failed.json"]
    )
    assert sum(f.stat().st_size for f in rec.rglob("*") if f.is_file()) < 200_000
    md = (out / "text-tiny-vanilla-va-seeds0-1.md").read_text()
    assert f"record (summaries and config: what this table reads) under `{rec}`" in md

    fresh = [str(tmp_path / "empty") if a == str(tmp / "runs") else a for a in head]
    again = reproduce.main([*fresh, "--records", str(rec), *args[cut:]])
    assert capsys.readouterr().out.count("[skip]") == 4 and not (tmp_path / "empty/text-tiny/va").exists()
    assert [r["test_nll"] for r in again] == [r["test_nll"] for r in results]
    body = lambda text: text.split("- wall time")[1].split("\n", 1)[1].split("Per-run numbers")[0]  # noqa: E731
    assert body((out / "text-tiny-vanilla-va-seeds0-1.md").read_text()) == body(md)

    only = [str(rec) if a == str(tmp / "runs") else a for a in head]
    again = reproduce.main([*only, "--table-only", *args[cut:]])
    assert [r["test_nll"] for r in again] == [r["test_nll"] for r in results]
    assert "bigram (counts)" in (out / "text-tiny-vanilla-va-seeds0-1.md").read_text()


def test_committed_tables_are_the_runs_their_records_hold(tmp_path, capsys):
    """Every committed table made with --records results/records is rebuilt from those records by
    its own command (--table-only --runs results/records): the numbers, tests, controls and sweep
    must come out as committed, so the table is the models it names. (Records of a sweep still in
    progress, with no table made from them yet, are not a table.)"""
    import shlex

    root = ROOT
    texts = {md.stem: md.read_text() for md in (root / "results").glob("*.md")}
    commands = {
        stem: shlex.split(t.split("- command: `lit-vattn-reproduce ", 1)[1].split("`", 1)[0])
        for stem, t in texts.items()
        if "- command: `lit-vattn-reproduce " in t
    }
    stems = sorted(
        m for m, c in commands.items() if "--records" in c and c[c.index("--records") + 1] == "results/records"
    )
    assert "acoustic-tiny" in stems
    for stem in stems:
        md, cmd = texts[stem], commands[stem]
        drop = {"--runs", "--out", "--records", "--parallel"}
        keep = [
            a for i, a in enumerate(cmd) if a not in drop and (i == 0 or cmd[i - 1] not in drop) and a != "--table-only"
        ]
        reproduce.main([*keep, "--runs", str(root / "results/records"), "--out", str(tmp_path), "--table-only"])
        body = lambda text: text.split("\n| arch |", 1)[1].split("\nPer-run numbers")[0]  # noqa: E731
        assert body((tmp_path / f"{stem}.md").read_text()) == body(md), stem
        assert (tmp_path / f"{stem}.csv").read_text() == (root / "results" / f"{stem}.csv").read_text(), stem
        rows = json.loads((tmp_path / f"{stem}.json").read_text())["rows"]
        assert rows == json.loads((root / "results" / f"{stem}.json").read_text())["rows"], stem
    capsys.readouterr()


def test_each_committed_tables_data_renders_its_markdown_table():
    """A table's JSON (what the method x modality table reads) holds the rows its markdown shows,
    cell for cell, so no summary is built from markdown and none can drift from it."""
    root = ROOT
    saved = sorted((root / "results").glob("*.json"))
    assert {t.stem for t in saved} >= {"text-tiny", "music-tiny", "acoustic-tiny"}
    for t in saved:
        data = json.loads(t.read_text())
        columns = [tables.Column(k, h) for k, h in data["columns"]]
        rendered = "\n".join(tables.render(columns, data["rows"]))
        assert rendered in (root / "results" / data["table"]).read_text(), t.name


def test_nll_by_position_adds_up_to_the_runs_test_nll_and_extends_past_the_trained_length(table):
    """Over the windows the run scored (the first 4 batches), the per-position sums are the run's own
    per-window test NLLs; at twice the trained length (RoPE extended) every window still scores
    all of its targets."""
    tmp, _, _ = table
    run = tmp / "runs/text-tiny/va/seed0"
    model, dm = loader.load(str(run / "fit/checkpoints/last.ckpt"))
    T = dm.seq_len
    windows = json.loads((run / "test/summary.json").read_text())["test_windows"]
    n = len(windows["index"])  # limit_test_batches 4 x batch_size 8: a prefix of the split's windows
    assert n == 4 * dm.batch_size and sorted(windows["index"]) == [j * T for j in range(n)]
    nll, count = analyze.position_nll(model, dm, T, max_windows=n)
    assert nll.shape == count.shape == (T,) and (count == n).all()
    assert nll.sum() / count.sum() == pytest.approx(sum(windows["nll"]) / sum(windows["tokens"]), rel=1e-5)
    nll2, count2 = analyze.position_nll(model, dm, 2 * T, max_windows=n // 2)
    assert model.net.cfg.max_seq_len == 2 * T and (count2 == n // 2).all()
    assert np.isfinite(nll2).all() and abs(nll2.sum() / count2.sum() - nll.sum() / count.sum()) < 0.5
    written = analyze.main(
        [
            "positions",
            "--ckpt_path",
            str(run / "fit/checkpoints/last.ckpt"),
            "--max_windows",
            "8",
            "--out",
            str(tmp / "pos"),
        ]
    )
    rows = list(csv.DictReader(open(tmp / "pos/positions.csv")))
    assert {Path(w).name for w in written} == {"positions.png", "positions.csv"}
    assert [int(r["seq_len"]) for r in rows] == [T] * T + [2 * T] * (2 * T) and {r["tokens"] for r in rows} == {"8"}
    with pytest.raises(SystemExit, match="--seq_lens 'x': comma-separated integers"):
        analyze.main(["positions", "--ckpt_path", str(run / "fit/checkpoints/last.ckpt"), "--seq_lens", "x"])


def test_positions_table_pairs_methods_with_vanilla_and_checks_itself(table):
    from lit_vattn.experiments import positions_table as mod

    tmp, _, _ = table
    out = tmp / "results/positions-text-tiny"
    md = mod.main(["--runs", str(tmp / "runs/text-tiny"), "--seeds", "0,1", "--max-windows", "16", "--out", str(out)])
    assert "| vanilla |" in md and "| va |" in md and "positions 129-256" in md and "Holm" in md
    check = float(md.split("test NLL (its per-window NLLs in test/summary.json) within ")[1].split(" nats")[0])
    assert check < 1e-4 and "not checked" not in md  # every run's own windows, re-scored by position
    assert out.with_suffix(".png").stat().st_size > 1000
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    assert {(r["arch"], r["seq_len"]) for r in rows} == {(a, L) for a in ("vanilla", "va") for L in ("128", "256")}
    assert all(
        (tmp / f"runs/text-tiny/{a}/seed{s}/positions.json").is_file() for a in ("vanilla", "va") for s in (0, 1)
    )
    with pytest.raises(SystemExit, match="--seq-lens '64': lengths >= 1, the longest >= the trained length 128"):
        mod.main(["--runs", str(tmp / "runs/text-tiny"), "--seeds", "0,1", "--seq-lens", "64", "--out", str(out)])
    with pytest.raises(SystemExit, match="no finished run"):
        mod.main(["--runs", str(tmp / "runs/text-tiny"), "--seeds", "0,1,2", "--out", str(out)])


def test_depth_table_gives_each_value_over_seeds_paired_with_vanilla_and_caches_it(table, monkeypatch):
    """Each run's lens and maps are the checkpoint's own (re-measured here), the table's cells are
    their seed mean and paired difference to vanilla, and a second invocation reads the per-run
    cache instead of loading any checkpoint."""
    import numpy as np

    from lit_vattn.experiments import depth_table as mod
    from lit_vattn.tools import analyze, loader

    tmp, _, _ = table
    runs, out = tmp / "runs/text-tiny", tmp / "results/depth-text-tiny"
    argv = ["--runs", str(runs), "--archs", "va,vanilla", "--seeds", "0,1", "--batches", "2", "--out", str(out)]
    md = mod.main(argv)
    data = json.loads(out.with_suffix(".json").read_text())["runs"]
    model, dm = loader.load(str(runs / "va/seed1/fit/checkpoints/last.ckpt"))
    states, nll, agree, n = analyze.lens_values(model, dm, 2)
    assert data["va"]["1"]["lens"]["state"] == states and data["va"]["1"]["lens"]["tokens"] == n
    assert data["va"]["1"]["path"] == "va/seed1"  # named within --runs, wherever the runs lie
    assert np.allclose(data["va"]["1"]["lens"]["agree"], agree) and np.allclose(data["va"]["1"]["lens"]["nll"], nll)
    weights = analyze.map_values(model, dm, 2)
    assert set(data["va"]["1"]["maps"]) == set(weights) and data["vanilla"]["0"]["maps"] == {}  # vanilla: no map

    def cell(title: str, arch: str, state: str) -> str:
        block = md.split(title)[1].split("\n\n")[1].splitlines()
        row = next(r for r in block if r.startswith(f"| {arch} |"))
        return [c.strip() for c in row.split("|")][[c.strip() for c in block[0].split("|")].index(state)]

    base = [data["vanilla"][s]["lens"]["agree"][states.index("in1")] for s in ("0", "1")]
    assert cell("top-1 agreement", "vanilla", "in1").startswith(f"{np.mean(base):.3f} ± {np.std(base, ddof=1):.3f}")
    va = [data["va"][s]["lens"]["agree"][states.index("in1")] for s in ("0", "1")]
    assert cell("top-1 agreement", "va", "in1").startswith(f"{np.mean(va) - np.mean(base):+.3f} [")
    assert cell("top-1 agreement", "vanilla", "readout").startswith("1.000")  # the readout is the output
    name = next(iter(weights))
    mean = np.mean([data["va"][s]["maps"][name]["values"] for s in ("0", "1")], 0)
    assert f"**va: {name}**" in md and f"{mean[0][0]:.3f} ± " in md and "seed agreement r = " in md
    assert out.with_suffix(".png").stat().st_size > 1000 and (runs / "va/seed0/depth.json").is_file()

    monkeypatch.setattr(loader, "load", lambda *a, **k: pytest.fail("a cached run was loaded again"))
    assert mod.main(argv).split("- measured")[1] == md.split("- measured")[1]
    with pytest.raises(SystemExit, match="--archs must include vanilla"):
        mod.main(["--runs", str(runs), "--archs", "va", "--out", str(out)])
    with pytest.raises(SystemExit, match="need one lr folder with finished runs on seeds"):
        mod.main(["--runs", str(runs), "--archs", "vanilla,va", "--seeds", "0,1,2", "--out", str(out)])


def test_positions_table_reads_the_runs_a_tuned_table_scored(table, tmp_path):
    """--lrs-from: each (arch, seed) from <arch>/lr<lr>/seed<s> as that table's CSV says; the same
    runs give the same table as read from <arch>/seed<s>; a run the CSV lacks is refused."""
    import shutil

    from lit_vattn.experiments import positions_table as mod

    tmp, _, _ = table
    lrs = {("vanilla", 0): 0.0015, ("vanilla", 1): 0.0015, ("va", 0): 0.00075, ("va", 1): 0.00075}
    for (a, s), lr in lrs.items():  # the fixture's runs, laid out as a sweep's
        shutil.copytree(tmp / f"runs/text-tiny/{a}/seed{s}", tmp_path / f"runs/{a}/lr{lr:g}/seed{s}")
    table_csv = tmp_path / "text-tiny.csv"
    table_csv.write_text("arch,seed,lr\n" + "".join(f"{a},{s},{lr}\n" for (a, s), lr in lrs.items()))
    common = ["--seeds", "0,1", "--max-windows", "16"]
    md = mod.main(
        ["--runs", str(tmp_path / "runs"), "--lrs-from", str(table_csv), *common, "--out", str(tmp_path / "tuned")]
    )
    ref = mod.main(["--runs", str(tmp / "runs/text-tiny"), *common, "--out", str(tmp_path / "plain")])
    assert (tmp_path / "runs/va/lr0.00075/seed1/positions.json").is_file()  # scored (or its cache read) there
    assert md.split("| arch |")[1] == ref.split("| arch |")[1]
    assert "lr<lr>/seed<s>" in md and "each method's lr from" in md
    table_csv.write_text("arch,seed,lr\nvanilla,0,0.0015\nvanilla,1,0.0015\nva,0,0.00075\n")
    with pytest.raises(SystemExit, match="has no run of va seed 1"):
        mod.main(
            ["--runs", str(tmp_path / "runs"), "--lrs-from", str(table_csv), *common, "--out", str(tmp_path / "tuned")]
        )


def test_method_table_in_the_findings_and_results_is_the_one_the_committed_tables_give(capsys):
    """The findings' "method x modality" table and results/methods-tiny.md are copies of what
    lit_vattn/experiments/methods_table.py builds from the committed per-modality tables: none can drift."""
    from lit_vattn.experiments import methods_table as mod

    root = ROOT

    def rows(text):
        return [line for line in text.splitlines() if line.startswith("| ")]

    built = rows(mod.main(["--preset", "tiny"]))
    methods = default_request()
    # header, then every method (in the tables' order), then any control a table holds
    assert sorted(r.split("|")[1].strip() for r in built[1 : 1 + len(methods)]) == sorted(methods)
    assert rows((root / "results/methods-tiny.md").read_text()) == built
    findings = (root / "results/findings.md").read_text()
    section = findings[findings.index("Method x modality at `tiny`") :]
    assert rows(section.split("\n\n", 2)[1]) == built


def test_method_table_names_each_methods_chosen_lr_and_puts_controls_last(tmp_path, capsys):
    """Where a modality's table chose a learning rate per method (--lrs), each cell says which; a
    table with one shared lr adds nothing; controls come after the compared methods and are
    "not run" where a modality's table lacks them."""
    from lit_vattn.experiments import methods_table as mod

    def table(modality, provenance, lr, rows):
        cells = ("arch", "runs", "lr", "delta", "verdict")
        (tmp_path / f"{modality}-tiny.json").write_text(
            json.dumps(
                {
                    "table": f"{modality}-tiny.md",
                    "provenance": provenance,
                    "lr": lr,
                    "rows": [dict(zip(cells, r)) for r in rows],
                }
            )
        )

    table(
        "music",
        "commit: abc",
        "tuned",
        [
            ("va-frozen", "3/3", "0.006", "-0.1 ± 0.01", "better"),
            ("vanilla", "3/3", "0.003", "—", "—"),
            ("va", "3/3", "0.006", "-0.2 ± 0.02", "better"),
        ],
    )
    table(
        "text",
        "commit: def",
        "shared",
        [
            ("vanilla", "3/3", "0.003", "—", "—"),
            ("va", "3/3", "0.003", "-0.1 ± 0.01", "no detectable difference"),
            ("bigram (counts)", "count model", "—", "—", "—"),
        ],
    )
    text = mod.main(["--preset", "tiny", "--results", str(tmp_path)])
    rows = [line for line in text.splitlines() if line.startswith("| ") and "method" not in line]
    assert rows == [  # columns: acoustic, music, text
        "| vanilla | not run | — (lr 0.003) | — |",
        "| va | not run | -0.2 ± 0.02 [3] better (lr 0.006) | -0.1 ± 0.01 [3] n.d. |",
        "| va-frozen | not run | -0.1 ± 0.01 [3] better (lr 0.006) | not run |",
    ]
    assert "music-tiny.md` (commit: abc; learning rate: each method's own" in text
    assert "text-tiny.md` (commit: def; one learning rate for every method)" in text


def test_gpu_steps_name_requests_that_resolve(tmp_path):
    """scripts/gpu_steps.sh runs on a bare GPU machine where debugging is expensive: every step's
    reproduce request must resolve here (methods, presets and configs exist; --table-only then stops
    only because nothing has run), and an unknown step is refused."""
    import shlex
    import subprocess

    script = ROOT / "scripts/gpu_steps.sh"
    steps = [
        ["small", "text", "0,1,2", "vanilla,va,sla,las,elc-bert"],
        ["small", "music"],
        ["mqar", "8"],
        ["tests"],
        ["generate"],
        ["throughput", "vanilla,sla"],
        ["acceptance"],
    ]
    requests = 0
    for step in steps:
        out = subprocess.run(
            ["bash", str(script), "--dry-run", *step], capture_output=True, text=True, check=True
        ).stdout
        for line in out.splitlines():
            argv = shlex.split(line.removeprefix("+ "))
            if argv[:3] != ["python", "-m", "lit_vattn.experiments.reproduce"]:
                continue
            argv = argv[3:]
            cut = argv.index("--override") if "--override" in argv else len(argv)
            argv[cut:cut] = ["--table-only", "--runs", str(tmp_path / "none")]
            with pytest.raises(SystemExit, match="--table-only: vanilla seed 0 has no finished summary"):
                reproduce.main(argv)
            requests += 1
    assert requests == 4
    ladder = subprocess.run(["bash", str(script), "--dry-run", "ladder"], capture_output=True, text=True, check=True)
    argv = shlex.split(
        next(x for x in ladder.stdout.splitlines() if "lit_vattn.experiments.ladder" in x).removeprefix("+ ")
    )
    from lit_vattn.experiments import ladder as ladder_cli

    argv = argv[3:] + ["--table-only", "--runs", str(tmp_path / "none"), "--records", str(tmp_path / "none")]
    with pytest.raises(SystemExit, match="--table-only: vanilla seed 100 lr 0.003 has no finished summary"):
        ladder_cli.main(argv)  # every rung, method and option of the GPU step resolves
    bad = subprocess.run(["bash", str(script), "--dry-run", "bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown step 'bogus'" in bad.stderr


@pytest.mark.slow
def test_the_one_gpu_acceptance_command_rehearses_on_the_cpu(tmp_path, shard_cache):
    """``gpu_steps.sh --cpu-dry-run acceptance`` runs the GPU call's three parts at a CPU scale and
    leaves what the GPU call would bring back: the test report, a throughput row per registered
    method, the comparison's table and its run records without checkpoints."""
    import subprocess
    import tarfile
    import xml.etree.ElementTree as ET

    from lit_vattn.arch.registry import methods

    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "RUNS": str(tmp_path / "runs")}
    p = subprocess.run(
        ["bash", str(ROOT / "scripts/gpu_steps.sh"), "--cpu-dry-run", "acceptance"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0 and "cut off" not in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]
    report = ET.parse(out / "acceptance-tests.xml").getroot().find("testsuite")
    assert int(report.get("tests")) > 0 and report.get("failures") == report.get("errors") == "0"
    rows = [
        line.split("|")[1].strip()
        for line in (out / "throughput.md").read_text().splitlines()[2:]
        if line.startswith("| ")
    ]
    assert set(methods()) <= set(rows)
    assert len(list((out / "tables").glob("text-tiny-vanilla-va-sla-las-seeds0.md"))) == 1
    names = tarfile.open(out / "runs-acceptance.tgz").getnames()
    assert sum(n.endswith("done.json") for n in names) == 4 and not any(n.endswith(".ckpt") for n in names)


# --- interruptions ---------------------------------------------------------------------------------


def _runner(tmp_path):
    import argparse

    return reproduce.Runner(
        argparse.Namespace(
            runs=str(tmp_path / "runs"),
            config_dir=str(reproduce.CONFIG_DIR),
            parallel=1,
            modality="text",
            preset="tiny",
            records=None,
            override=[],
        )
    )


def test_a_killed_run_is_interrupted_and_only_its_own_error_is_a_failure(tmp_path):
    runner = _runner(tmp_path)
    with pytest.raises(reproduce.RunInterrupted, match="exit -9"):  # a killed worker (OOM killer, kill -9)
        runner._call([sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"], tmp_path / "a.log")
    with pytest.raises(reproduce.RunInterrupted, match="KeyboardInterrupt"):
        runner._call([sys.executable, "-c", "raise KeyboardInterrupt"], tmp_path / "b.log")
    with pytest.raises(reproduce.RunFailed, match="ValueError: boom"):
        runner._call([sys.executable, "-c", "raise ValueError('boom')"], tmp_path / "c.log")
    runner.stop_signal = signal.SIGTERM  # after a signal no run starts
    with pytest.raises(reproduce.RunInterrupted, match="not started: SIGTERM"):
        runner._call([sys.executable, "-c", "pass"], tmp_path / "d.log")
    # an interruption recorded as a failure by an older version is not reported as failed by --table-only
    d = runner.run_dir("vanilla", 0)
    d.mkdir(parents=True)
    (d / "failed.json").write_text(json.dumps({"arch": "vanilla", "seed": 0, "failed": "exit 1: KeyboardInterrupt"}))
    with pytest.raises(SystemExit, match="no finished summary"):
        runner.summary("vanilla", 0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig,to_group", [(signal.SIGINT, True), (signal.SIGTERM, False)], ids=["ctrl-c", "sigterm-to-reproduce"]
)
def test_a_signal_leaves_the_run_resumable_and_the_same_command_finishes_it(
    sig, to_group, tmp_path, shard_cache, bpe_text
):
    """Ctrl-C reaches the whole process group; a SIGTERM to lit-vattn-reproduce alone (a scheduler's
    kill) is passed on to the run it started. Either way: exit 128 + signal, no failure, no table."""
    runs = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "lit_vattn.experiments.reproduce",
        "--modality",
        "text",
        "--archs",
        "vanilla",
        "--seeds",
        "0",
        "--runs",
        str(runs),
        "--out",
        str(tmp_path / "out"),
        "--no-baselines",
        "--override",
        "--checkpoint.every_n_train_steps",
        "2",
        "--trainer.val_check_interval",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.limit_test_batches",
        "2",
        "--trainer.log_every_n_steps",
        "1",
    ]
    d = runs / "text-tiny/vanilla/seed0"
    ckpt = d / "fit/checkpoints/last.ckpt"
    cmd += ["--trainer.max_steps", "60"]  # the same command resumes it: another budget would be another run
    p = subprocess.Popen(
        cmd,
        preexec_fn=os.setpgrp,
        text=True,  # its own process group, as a shell gives it
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 300
    while not ckpt.exists():
        assert p.poll() is None and time.time() < deadline, p.communicate()
        time.sleep(0.5)
    os.killpg(p.pid, sig) if to_group else p.send_signal(sig)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 128 + sig, err[-3000:]
    assert "[interrupted] vanilla seed 0" in err and f"resumes from {ckpt}" in err and "no table written" in err
    assert not (d / "failed.json").exists() and not (d / "done.json").exists()
    assert not list(tmp_path.glob("out/*.md"))
    step = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    assert step < 60
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"[resume] vanilla seed 0 from {ckpt}" in again.stdout
    done = json.loads((d / "done.json").read_text())
    assert done["resumed"] and done["steps"] == 60 and done["test_nll"] > 0


# --- many GPUs ---------------------------------------------------------------------------------------


def _gpus_of_concurrent_runs(tmp_path, monkeypatch, parallel: int, n_jobs: int) -> list[list[str]]:
    """The CUDA_VISIBLE_DEVICES each run would start with, grouped by the rounds that run together."""
    runner = _runner(tmp_path)
    runner.args.parallel = parallel
    runner.gpus = reproduce.visible_gpus()
    together = threading.Barrier(parallel)
    seen = []

    def one(arch, seed, lr=None):
        seen.append((seed, runner.env["CUDA_VISIBLE_DEVICES"]))
        together.wait(timeout=10)  # every slot is busy at once, as when runs train side by side
        return {"arch": arch, "seed": seed}

    monkeypatch.setattr(runner, "one", one)
    assert [r["seed"] for r in runner.run_all([("vanilla", s) for s in range(n_jobs)])] == list(range(n_jobs))
    gpus = [g for _, g in seen]
    return [sorted(gpus[k : k + parallel]) for k in range(0, n_jobs, parallel)]


def test_parallel_runs_go_round_robin_over_the_visible_gpus(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert reproduce.visible_gpus() == ["0", "1"]
    # two at once on two GPUs: never the same GPU; four at once: two runs per GPU
    assert _gpus_of_concurrent_runs(tmp_path, monkeypatch, 2, 6) == [["0", "1"]] * 3
    assert _gpus_of_concurrent_runs(tmp_path, monkeypatch, 4, 8) == [["0", "0", "1", "1"]] * 2


def test_parallel_runs_use_only_the_gpus_they_are_given(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert _gpus_of_concurrent_runs(tmp_path, monkeypatch, 2, 4) == [["3", "5"]] * 2


def test_one_run_at_a_time_leaves_the_devices_to_its_trainer(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    runner = _runner(tmp_path)  # parallel=1: a DDP preset may use every GPU
    assert runner.gpus == [] and "CUDA_VISIBLE_DEVICES" not in runner.env


# --- one data per table ------------------------------------------------------------------------


def test_a_table_refuses_runs_trained_on_different_data():
    rows = [
        {"arch": "vanilla", "seed": 0, "data_digest": "a" * 64},
        {"arch": "va", "seed": 0, "data_digest": "b" * 64},
        {"arch": "sla", "seed": 0},  # recorded before digests: not judged here
    ]
    with pytest.raises(
        SystemExit, match=r"trained on different data .* aaaaaaaaaaaa: vanilla seed 0; bbbbbbbbbbbb: va"
    ):
        reproduce.check_one_data(rows, None)
    reproduce.check_one_data(rows[:1] + rows[2:], [{"arch": "unigram (counts)", "data_digest": "a" * 64}])
    with pytest.raises(SystemExit, match="different data"):
        reproduce.check_one_data(rows[:1], [{"arch": "unigram (counts)", "data_digest": "c" * 64}])


def test_the_records_token_shards_are_restored_into_the_runs_cache_before_the_data_check(tmp_path, monkeypatch):
    """Kept shards (``<table>/data/<key>``) go into the cache the runs read (the override's
    ``data.init_args.cache_dir`` here) before anything is prepared; a cache that already holds another
    build of that key is not overwritten, and the refusal says where the kept shards are."""
    import argparse

    import numpy as np

    from datamodules import shards

    table = tmp_path / "records" / "acoustic-tiny"
    w = shards.ShardWriter(table / "data" / "acoustic-0123456789abcdef", 16)
    for split in shards.SPLITS:
        w.add(split, [1, 2, 3])
    w.commit({}, np.ones(16))
    cache = tmp_path / "cache"
    args = argparse.Namespace(
        records=str(tmp_path / "records"),
        table_only=False,
        no_baselines=False,
        modality="acoustic",
        preset="tiny",
        override=["--data.init_args.cache_dir", str(cache)],
    )
    assert reproduce.restore_recorded_data(argparse.Namespace(**{**vars(args), "table_only": True})) == []
    assert reproduce.restore_recorded_data(args) == [cache / "acoustic-0123456789abcdef"]
    assert shards.digest(cache / "acoustic-0123456789abcdef") == shards.digest(table / "data/acoustic-0123456789abcdef")
    (table / "vanilla" / "seed0").mkdir(parents=True)
    (table / "vanilla" / "seed0" / "done.json").write_text("{}")
    recorded = [{"arch": "unigram (counts)", "val_nll": 7.0, "test_nll": 7.1, "data_digest": "e" * 64}]
    (table / reproduce.COUNTS).write_text(json.dumps(recorded))
    monkeypatch.setattr(reproduce, "count_baselines", lambda results: [{**recorded[0], "data_digest": "d" * 64}])
    with pytest.raises(SystemExit, match=rf"keep their token shards in {table / 'data'}: move .* out of {cache}"):
        reproduce.check_recorded_data(args)


def test_new_runs_are_refused_when_this_machines_data_differ_from_the_records(tmp_path, monkeypatch):
    """Records without digests: the count rows recomputed here must equal the recorded ones; with
    digests on both sides, the digests decide. Nothing is checked for --table-only."""
    import argparse

    table = tmp_path / "records" / "acoustic-tiny"
    (table / "vanilla" / "seed0").mkdir(parents=True)
    (table / "vanilla" / "seed0" / "done.json").write_text("{}")
    recorded = [{"arch": "unigram (counts)", "val_nll": 7.658489, "test_nll": 7.809178}]
    (table / reproduce.COUNTS).write_text(json.dumps(recorded))
    here = [{"arch": "unigram (counts)", "val_nll": 7.674791, "test_nll": 7.825445, "data_digest": "d" * 64}]
    monkeypatch.setattr(reproduce, "count_baselines", lambda results: here)
    args = argparse.Namespace(
        records=str(tmp_path / "records"), table_only=False, no_baselines=False, modality="acoustic", preset="tiny"
    )
    with pytest.raises(
        SystemExit, match=r"acoustic data prepared on this machine differ .* recorded val NLL 7.658489, here 7.674791"
    ):
        reproduce.check_recorded_data(args)
    reproduce.check_recorded_data(argparse.Namespace(**{**vars(args), "table_only": True}))
    here[0].update(val_nll=7.658489, test_nll=7.809178)
    reproduce.check_recorded_data(args)  # same counts: the same data
    recorded[0]["data_digest"] = "e" * 64
    (table / reproduce.COUNTS).write_text(json.dumps(recorded))
    with pytest.raises(SystemExit, match="digest recorded eeeeeeeeeeee, here dddddddddddd"):
        reproduce.check_recorded_data(args)
