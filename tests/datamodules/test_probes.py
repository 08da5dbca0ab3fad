"""The in-context probes (datamodules/probes.py): the examples are the tasks they claim (an oracle
that looks the answer up in the context is always right, nothing else is scored), the evaluation
sets are shared by every seed, the training stream resumes exactly and splits across ranks, bad
settings are refused naming the option, and the module's accuracy is the top-1 rate on answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import ROOT  # noqa: E402

from datamodules.probes import EVAL_SEED, ProbeDataModule, gap_probabilities
from datamodules.windows import IGNORE
from lit_vattn.train.metrics import NLLMetrics


def batches(loader, n):
    out = []
    for i, b in enumerate(loader):
        if i == n:
            break
        out.append(b)
    return out


def lookup_oracle(x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of answering each scored position by finding the *first* earlier occurrence of the
    current token and copying the token after it: what associative recall and induction need."""
    hits = total = 0
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        for p, t in enumerate(row_y):
            if t == IGNORE:
                continue
            first = row_x.index(row_x[p])
            assert first < p, "the current token must occur earlier in the window"
            hits += row_x[first + 1] == t
            total += 1
    return hits / total


@pytest.mark.parametrize("random_non_queries", [True, False])
def test_mqar_examples_follow_zoology(random_non_queries):
    n, V, T = 8, 256, 64
    dm = ProbeDataModule(
        task="mqar", vocab=V, num_kv_pairs=n, seq_len=T, random_non_queries=random_non_queries, val_examples=200
    )
    x = torch.cat([b["input"] for b in dm.val_dataloader()])
    y = torch.cat([b["target"] for b in dm.val_dataloader()])
    assert x.shape == y.shape == (200, T) and x.dtype == y.dtype == torch.int64
    for row_x, row_y in zip(x, y):
        keys, values = row_x[0 : 2 * n : 2], row_x[1 : 2 * n : 2]
        assert len(set(keys.tolist())) == n and ((keys >= 1) & (keys < V // 2)).all()
        assert len(set(values.tolist())) == n and ((values >= V // 2) & (values < V)).all()
        scored = (row_y != IGNORE).nonzero().flatten()
        assert len(scored) == n and (scored >= 2 * n).all() and (scored % 2 == 0).all()  # queries at even offsets
        assert sorted(row_x[scored].tolist()) == sorted(keys.tolist())  # every key queried once
        lookup = dict(zip(keys.tolist(), values.tolist()))
        assert [lookup[k] for k in row_x[scored].tolist()] == row_y[scored].tolist()
        filler = torch.ones(T, dtype=torch.bool)
        filler[: 2 * n] = False
        filler[scored] = False
        if not random_non_queries:
            assert (row_x[filler] == 0).all()
    if random_non_queries:  # filler is uniform over the whole vocabulary
        assert x[:, 2 * n :].max() > V // 2 and (x[:, 2 * n :] == 0).float().mean() < 0.05
    assert lookup_oracle(x, y) == 1.0


def test_mqar_gap_law_controls_recall_distance():
    """power_a = 0.01 (Zoology) puts queries near the pairs; 1.0 spreads them uniformly."""
    p = gap_probabilities(24, 1.0)
    assert np.allclose(p, 1 / 24)
    near, far = (
        ProbeDataModule(task="mqar", power_a=a, val_examples=300, random_non_queries=False) for a in (0.01, 1.0)
    )

    def mean_gap(dm):
        y = torch.cat([b["target"] for b in dm.val_dataloader()])
        return ((y != IGNORE).nonzero()[:, 1].float() - 16).mean().item() / 2

    assert mean_gap(near) < 0.7 * mean_gap(far)
    assert abs(mean_gap(far) - 23 / 2) < 1.0  # uniform over gaps 0..23


@pytest.mark.parametrize("gap", [0, 7])
def test_copy_examples_are_solved_by_induction_not_by_position(gap):
    L, V, T = 12, 64, 48
    dm = ProbeDataModule(task="copy", vocab=V, copy_len=L, copy_gap=gap, seq_len=T, val_examples=100)
    x = torch.cat([b["input"] for b in dm.val_dataloader()])
    y = torch.cat([b["target"] for b in dm.val_dataloader()])
    seconds = []
    for row_x, row_y in zip(x, y):
        second = int((row_x[1:] == 1).nonzero()[0]) + 1  # the second SEP
        seconds.append(second)
        assert L + 1 <= second <= L + 1 + gap
        seq = row_x[1 : L + 1]
        assert row_x[0] == 1 and row_x[second] == 1 and (row_x[second + 1 : second + 1 + L] == seq).all()
        assert len(set(seq.tolist())) == L and (seq >= 2).all()
        others = torch.cat([row_x[L + 1 : second], row_x[second + 1 + L :]])
        assert (
            not set(others.tolist()) & set(seq.tolist()) and 1 not in others.tolist()
        )  # filler never repeats an answer's cue
        scored = (row_y != IGNORE).nonzero().flatten()
        assert scored.tolist() == list(range(second, second + L))
        assert (row_y[scored] == row_x[scored + 1]).all()
    assert lookup_oracle(x, y) == 1.0
    assert set(seconds) == set(range(L + 1, L + 2 + gap))  # every gap in [0, copy_gap] occurs: no fixed offset


def test_evaluation_sets_are_shared_by_every_seed_and_training_streams_are_not():
    a, b = ProbeDataModule(seed=0), ProbeDataModule(seed=1)
    for split in ("val", "test"):
        xa = getattr(a, f"{split}_dataloader")()
        xb = getattr(b, f"{split}_dataloader")()
        assert all(torch.equal(p["input"], q["input"]) for p, q in zip(batches(xa, 3), batches(xb, 3)))
    va, te = batches(a.val_dataloader(), 1)[0]["input"], batches(a.test_dataloader(), 1)[0]["input"]
    assert not torch.equal(va, te)
    ta, tb = batches(a.train_dataloader(), 1)[0], batches(b.train_dataloader(), 1)[0]
    assert not torch.equal(ta["input"], tb["input"])
    assert not any(torch.equal(ta["input"][0], v) for v in va)  # training draws other examples
    assert EVAL_SEED not in (0, 1)


def test_resume_continues_the_stream_and_ranks_are_disjoint():
    """consumed (the checkpoint's) restarts the stream where it stopped; two ranks draw disjoint
    samples whose union is the single-process stream's, and split the evaluation examples."""
    dm = ProbeDataModule(seed=3, batch_size=4)
    full = batches(dm.train_dataloader(), 4)
    again = ProbeDataModule(seed=3, batch_size=4)
    again.load_state_dict({**dm.state_dict(), "consumed": 8})
    rest = batches(again.train_dataloader(), 2)
    assert all(torch.equal(p["input"], q["input"]) for p, q in zip(full[2:], rest))
    assert [b["index"].tolist() for b in rest] == [[8, 9, 10, 11], [12, 13, 14, 15]]

    class FakeTrainer:
        world_size, training = 2, False

        def __init__(self, rank):
            self.global_rank = rank

    ranks = []
    for r in (0, 1):
        d = ProbeDataModule(seed=3, batch_size=2, test_examples=7)
        d.trainer = FakeTrainer(r)
        ranks.append((batches(d.train_dataloader(), 2), torch.cat([b["index"] for b in d.test_dataloader()])))
    got = sorted(int(i) for bs, _ in ranks for b in bs for i in b["index"])
    assert got == list(range(8))
    by_index = {int(i): row for b in full for i, row in zip(b["index"], b["input"])}
    for bs, _ in ranks:
        for b in bs:
            assert all(torch.equal(by_index[int(i)], row) for i, row in zip(b["index"], b["input"]))
    assert sorted(torch.cat([t for _, t in ranks]).tolist()) == list(range(7))


def test_a_fixed_training_set_is_reshuffled_each_epoch():
    dm = ProbeDataModule(seed=0, batch_size=5, train_examples=10)
    epoch = [batches(dm.train_dataloader(), 2) for _ in range(1)][0]
    dm.consumed = 10
    nxt = batches(dm.train_dataloader(), 2)
    rows = lambda bs: sorted(tuple(r.tolist()) for b in bs for r in b["input"])  # noqa: E731
    assert rows(epoch) == rows(nxt)  # the same 10 examples
    assert [r.tolist() for b in epoch for r in b["input"]] != [r.tolist() for b in nxt for r in b["input"]]


@pytest.mark.parametrize(
    "kwargs,fix",
    [
        ({"task": "mqar", "num_kv_pairs": 20, "seq_len": 64}, "data.num_kv_pairs"),
        ({"task": "mqar", "seq_len": 63}, "data.seq_len"),
        ({"task": "mqar", "vocab": 12, "num_kv_pairs": 8}, "data.vocab"),
        ({"task": "mqar", "power_a": 0.0}, "data.power_a"),
        ({"task": "copy", "copy_len": 30, "copy_gap": 8, "seq_len": 64}, "data.copy_len"),
        ({"task": "copy", "vocab": 16, "copy_len": 14, "seq_len": 64}, "data.vocab"),
        ({"task": "recall"}, "data.task"),
        ({"test_examples": 0}, "data.test_examples"),
    ],
)
def test_impossible_settings_are_refused_naming_the_option(kwargs, fix):
    with pytest.raises(ValueError, match=fix.replace(".", r"\.")):
        ProbeDataModule(**kwargs)


def test_resuming_with_other_probe_settings_is_refused():
    state = ProbeDataModule(num_kv_pairs=8).state_dict()
    with pytest.raises(ValueError, match="other data settings"):
        ProbeDataModule(num_kv_pairs=4).load_state_dict(state)


def test_accuracy_is_the_top1_rate_on_answers_and_nll_matches_the_fused_path():
    from lit_vattn.model.config import GPTConfig
    from lit_vattn.train.module import LanguageModel

    torch.manual_seed(0)
    dm = ProbeDataModule(val_examples=16, batch_size=8)
    model = LanguageModel(GPTConfig(n_layer=2, n_head=2, d_model=32, max_seq_len=64), vocab_size=dm.vocab_size)
    model.report_accuracy = True
    metrics, hits, judged, nll = NLLMetrics(), 0, 0, 0.0
    with torch.no_grad():
        for b in dm.val_dataloader():
            out = model.eval_sums(b, per_sequence=True)
            fused = model.net(b["input"], targets=b["target"])
            assert torch.allclose(out["nll"], fused, rtol=1e-5)
            assert torch.allclose(out["rows"].sum(), fused, rtol=1e-5)
            logits = model.net(b["input"])
            mask = b["target"] != IGNORE
            h = (logits.argmax(-1) == b["target"])[mask]
            assert int(out["correct"]) == int(h.sum()) and out["correct_rows"].sum() == out["correct"]
            hits, judged, nll = hits + int(h.sum()), judged + int(mask.sum()), nll + float(fused)
            metrics.update(out["nll"], b["target"], None, out["correct"])
    m = metrics.compute("token")
    assert judged == 16 * 8 and abs(float(m["acc"]) - hits / judged) < 1e-7
    assert abs(float(m["nll"]) - nll / judged) < 1e-5
    text = NLLMetrics()
    text.update(torch.tensor(3.0), torch.ones(1, 2, dtype=torch.long), None)
    assert "acc" not in text.compute("token")  # data that does not report accuracy gets none


@pytest.mark.slow
def test_probe_fit_and_test_record_accuracy_and_per_example_hits(tmp_path, monkeypatch):
    """A probe run logs val/acc, test/acc and every test example's hits (for paired tests)."""
    import json

    from lit_vattn.train.cli import cli_main

    monkeypatch.chdir(tmp_path)
    base = [
        "--config",
        str(ROOT / "configs/data/mqar.yaml"),
        "--config",
        str(ROOT / "configs/trainer/cpu.yaml"),
        "--model.init_args.config.n_layer",
        "2",
        "--model.init_args.config.d_model",
        "32",
        "--data.init_args.val_examples",
        "12",
        "--data.init_args.test_examples",
        "20",
        "--data.init_args.batch_size",
        "8",
    ]
    cli_main(
        [
            "fit",
            *base,
            "--trainer.max_steps",
            "3",
            "--trainer.val_check_interval",
            "3",
            "--trainer.logger.init_args.version",
            "fit",
        ]
    )
    run = tmp_path / "runs/mqar-vanilla"
    cli_main(
        [
            "test",
            *base,
            "--ckpt_path",
            str(run / "fit/checkpoints/last.ckpt"),
            "--trainer.logger.init_args.version",
            "test",
        ]
    )
    fit, test = (json.loads((run / v / "summary.json").read_text()) for v in ("fit", "test"))
    assert 0.0 <= fit["val"][-1]["acc"] <= 1.0
    w = test["test_windows"]
    assert w["index"] == list(range(20)) and all(t == 8 for t in w["tokens"])
    assert abs(sum(w["correct"]) / sum(w["tokens"]) - test["test"]["acc"]) < 1e-6

    from lit_vattn.tools import generate  # a probe run is scored, not sampled: refused before it loads

    with pytest.raises(SystemExit, match="this run's data is mqar"):
        generate.main(["--ckpt_path", str(run / "fit/checkpoints/last.ckpt")])


@pytest.mark.slow
def test_reproduce_builds_a_probe_table_on_test_accuracy(tmp_path):
    """``lit-vattn-reproduce --modality copy``: the probe's header (task, chance), test accuracy as
    the table's metric, Δ = the paired accuracy difference, the bootstrap over test examples' hits,
    no count rows, and accuracy budget curves."""
    import csv
    import json

    from lit_vattn.experiments import reproduce

    short = [
        "--override",
        "--trainer.max_steps",
        "4",
        "--trainer.val_check_interval",
        "4",
        "--trainer.log_every_n_steps",
        "1",
        "--model.init_args.config.n_layer",
        "2",
        "--model.init_args.config.d_model",
        "32",
        "--data.init_args.val_examples",
        "32",
        "--data.init_args.test_examples",
        "48",
        "--curve.points",
        "2",
        "--curve.first_step",
        "2",
        "--curve.max_batches",
        "1",
    ]
    results = reproduce.main(
        [
            "--modality",
            "copy",
            "--preset",
            "tiny",
            "--archs",
            "vanilla,va",
            "--seeds",
            "0,1",
            "--runs",
            str(tmp_path / "runs"),
            "--out",
            str(tmp_path / "out"),
            *short,
        ]
    )
    md = (tmp_path / "out/copy-tiny-vanilla-va-seeds0-1.md").read_text()
    assert md.startswith("# copy in-context probe table (accuracy on the answers)")
    assert "induction copying: a sequence of 16 distinct ids" in md and "chance accuracy" in md and "0.0039" in md
    assert "Δ test accuracy vs vanilla" in md and "test examples of the seed-mean Δ of their hits" in md
    assert "(counts)" not in md
    by = {(r["arch"], r["seed"]): r for r in results}
    for r in results:
        test = json.loads((tmp_path / f"runs/copy-tiny/{r['arch']}/seed{r['seed']}/test/summary.json").read_text())
        assert r["test_acc"] == pytest.approx(test["test"]["acc"]) and 0 <= r["test_acc"] <= 1
        assert sum(test["test_windows"]["correct"]) == round(r["test_acc"] * 48 * 16)
    va = next(line for line in md.splitlines() if line.startswith("| va |")).split("|")
    delta = np.mean([by[("va", s)]["test_acc"] - by[("vanilla", s)]["test_acc"] for s in (0, 1)])
    assert float(va[9].split("±")[0]) == pytest.approx(delta, abs=1e-4)
    assert va[14].strip() in ("better", "worse", "no detectable difference") and 0 < float(va[13]) <= 1
    rows = list(csv.DictReader(open(tmp_path / "out/copy-tiny-vanilla-va-seeds0-1-budget.csv")))
    assert rows and all(0 <= float(r["val_acc_mean"]) <= 1 for r in rows)
