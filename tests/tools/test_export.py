"""``lit-vattn-export``: a run leaves the suite as a ``transformers`` model that computes the same
logits, generates, carries its tokenizer and model card, and scores in lm-eval's own ``hf`` model as
in the suite's adapter."""

import json

import pytest
import torch
from helpers import CPU, QUIET, ROOT, SMALL_DATA, TINY

transformers = pytest.importorskip("transformers")

from lit_vattn.tools import loader  # noqa: E402
from lit_vattn.tools.export import export  # noqa: E402

TEXT_ARCHS = ["vanilla", "va", "las", "sla", "hc"]


def fit(tmp, modality: str, arch: str):
    from lit_vattn.train.cli import cli_main

    method = ["--config", str(ROOT / f"configs/arch/{arch}.yaml")] if arch != "vanilla" else []
    base = ["--config", str(ROOT / f"configs/data/{modality}.yaml"), *method, "--config", CPU, *TINY, *QUIET]
    base += [*SMALL_DATA.get(modality, []), "--model.init_args.config.max_seq_len", "64"]
    base += ["--trainer.logger.init_args.save_dir", str(tmp / "runs")]
    cli_main(["fit", *base, "--trainer.max_steps", "3", "--trainer.limit_val_batches", "2"])
    ckpt = tmp / f"runs/{modality}-{arch}/checkpoints/last.ckpt"
    cli_main(["test", *base, "--trainer.limit_test_batches", "2", "--ckpt_path", str(ckpt)])
    return ckpt


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(modality, arch) -> (checkpoint, export directory)."""
    tmp = tmp_path_factory.mktemp("export")
    out = {}
    for modality, archs in (("text", TEXT_ARCHS), ("music", ["vanilla", "va"])):
        for arch in archs:
            ckpt = fit(tmp, modality, arch)
            out[modality, arch] = ckpt, export(str(ckpt), str(tmp / f"exports/{modality}-{arch}"))
    return out


def load_back(d):
    return transformers.AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True).eval()


@pytest.mark.parametrize("key", [("text", a) for a in TEXT_ARCHS] + [("music", "vanilla"), ("music", "va")])
def test_the_exported_model_gives_the_runs_logits(exported, key):
    ckpt, d = exported[key]
    ours, _ = loader.load(str(ckpt))
    theirs = load_back(d)
    assert type(theirs).__name__ == "LitVattnForCausalLM"
    x = torch.randint(0, ours.net.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = ours.net(x), theirs(input_ids=x).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)  # the same modules and weights: bit-identical


def test_generate_is_the_greedy_continuation_of_our_decoder(exported):
    ckpt, d = exported["text", "va"]
    ours, _ = loader.load(str(ckpt))
    theirs = load_back(d)
    x = torch.tensor([[5, 17, 230, 41]])
    with torch.no_grad():
        got = theirs.generate(x, max_new_tokens=8, do_sample=False, attention_mask=torch.ones_like(x))
        seq = x
        for _ in range(8):  # greedy with the suite's own network
            seq = torch.cat([seq, ours.net(seq)[:, -1:].argmax(-1)], 1)
    assert got.tolist() == seq.tolist()


def test_the_tokenizer_travels_and_encodes_as_the_run(exported):
    ckpt, d = exported["text", "vanilla"]
    _, dm = loader.load(str(ckpt))
    tok = transformers.AutoTokenizer.from_pretrained(d)
    text = "In the beginning God created the heaven and the earth.\n\nA word:  “quoted” — 1,234 ünïcode."
    assert tok(text)["input_ids"] == dm.tokenizer.encode_batch([text])[0]
    assert tok.decode(tok(text)["input_ids"]) == text
    assert not (d.parent / "music-vanilla" / "tokenizer.json").exists()  # MIDI tokens have no text tokenizer


def test_the_model_card_names_the_method_its_paper_and_its_scores(exported):
    ckpt, d = exported["text", "va"]
    card = (d / "README.md").read_text()
    summary = json.loads((ckpt.parent.parent / "summary.json").read_text())
    assert "# Vertical Attention on text" in card and "openreview.net/forum?id=A6uabXKiXc" in card
    assert f"| test nll | {summary['test']['nll']:.4f} |" in card
    assert f"| tokens seen | {summary['stats']['tokens_seen']:,} |" in card
    assert f"| commit | {summary['stats']['commit']} |" in card
    config = json.loads((d / "config.json").read_text())
    assert config["readers"][0]["class_path"].endswith("VerticalAttention") and config["model_type"] == "lit_vattn"


@pytest.mark.slow
def test_lm_eval_hf_model_scores_the_export_as_the_suites_adapter(exported, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager
    from test_lm_eval import DOCS, TASKS

    from lit_vattn.tools.lm_eval_adapter import LitVattnLM

    ckpt, d = exported["text", "va"]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in DOCS))
    for name in ("lv_mc", "lv_rolling"):
        (tmp_path / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    test: {tmp_path / 'docs.jsonl'}\ntest_split: test\n{TASKS[name]}"
        )
    tasks = dict(tasks=["lv_mc", "lv_rolling"], task_manager=TaskManager(include_path=str(tmp_path)))
    adapter = lm_eval.simple_evaluate(model=LitVattnLM(ckpt_path=str(ckpt), batch_size=1, device="cpu"), **tasks)
    from lm_eval.models.huggingface import HFLM  # what `lm_eval --model hf` builds

    hf = lm_eval.simple_evaluate(
        model=HFLM(pretrained=str(d), trust_remote_code=True, device="cpu", batch_size=1), **tasks
    )
    for task, metric in (("lv_mc", "acc,none"), ("lv_rolling", "word_perplexity,none")):
        assert hf["results"][task][metric] == pytest.approx(adapter["results"][task][metric], rel=1e-5)


def test_a_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        export(str(tmp_path / "nope.ckpt"), str(tmp_path / "out"))
