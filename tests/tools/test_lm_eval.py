"""The lm-evaluation-harness adapter, offline: local jsonl tasks of the three request types on a tiny
text checkpoint, each score checked against a direct computation with the network."""

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

lm_eval = pytest.importorskip("lm_eval")

from helpers import tiny_run  # noqa: E402

DOCS = [
    {
        "question": "In the beginning God created the",
        "choices": ["heaven", "dog", "window"],
        "answer": 0,
        "text": "And the earth was without form, and void; and darkness was upon the face of the deep.",
    },
    {
        "question": "And God said, Let there be",
        "choices": ["light", "a", "of the"],
        "answer": 0,
        "text": "A word of the dictionary: a small unit of language with a meaning of its own.",
    },
    {
        "question": "The Lord is my",
        "choices": ["shepherd", "table", "and"],
        "answer": 1,
        "text": "Blessed are the meek: for they shall inherit the earth. " * 6,
    },  # longer than the context: rolling windows
]
TASKS = {
    "lv_mc": "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
    "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n",
    "lv_rolling": "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
    "metric_list:\n  - metric: word_perplexity\n",
    "lv_gen": "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{choices[0]}}'\n"
    "generation_kwargs:\n  until: ['.']\n  max_gen_toks: 6\n  do_sample: false\n"
    "metric_list:\n  - metric: exact_match\n",
}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from lit_vattn.tools.lm_eval_adapter import LitVattnLM

    tmp = tmp_path_factory.mktemp("lm_eval")
    mp = pytest.MonkeyPatch()
    try:
        ckpt = tiny_run("text", tmp, mp)
    finally:
        mp.undo()
    data = tmp / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    for name, body in TASKS.items():
        (tmp / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    test: {data}\ntest_split: test\n{body}"
        )
    lm = LitVattnLM(ckpt_path=str(ckpt), batch_size=2, device="cpu")
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model=lm, tasks=list(TASKS), task_manager=TaskManager(include_path=str(tmp)), log_samples=True
    )
    return lm, out


def logprob(lm, ctx: list[int], cont: list[int]) -> float:
    """Direct: the continuation's summed log-probability after the context, one unpadded forward."""
    x = torch.tensor([(ctx + cont)[:-1]])
    with torch.no_grad():
        lp = F.log_softmax(lm.net(x).float(), -1)[0, len(ctx) - 1 :]
    return float(lp.gather(1, torch.tensor(cont)[:, None]).sum())


def test_multiple_choice_scores_are_the_networks_log_probabilities(evaluated):
    lm, out = evaluated
    samples = sorted(out["samples"]["lv_mc"], key=lambda s: s["doc_id"])
    correct = 0
    for s, doc in zip(samples, DOCS):
        ctx = lm.encode(doc["question"])
        direct = [logprob(lm, ctx, lm.encode(doc["question"] + " " + c)[len(ctx) :]) for c in doc["choices"]]
        harness = [r[0][0] for r in s["resps"]]
        assert harness == pytest.approx(direct, abs=1e-4)
        correct += int(max(range(3), key=lambda i: direct[i]) == doc["answer"])
    assert out["results"]["lv_mc"]["acc,none"] == pytest.approx(correct / len(DOCS))


def test_rolling_loglikelihood_is_the_documents_log_probability(evaluated):
    lm, out = evaluated
    samples = sorted(out["samples"]["lv_rolling"], key=lambda s: s["doc_id"])
    total_ll, words = 0.0, 0
    for s, doc in zip(samples, DOCS):
        ids = lm.encode(doc["text"])
        if len(ids) < lm.max_length:  # one window: [eot] + the text
            direct = logprob(lm, [lm.eot], ids)
        else:  # disjoint windows of max_length predicted tokens, each with the tokens before it as context
            T, direct = lm.max_length, 0.0
            direct += logprob(lm, [lm.eot], ids[:T])
            for a in range(T, len(ids), T):
                b = min(a + T, len(ids))
                direct += logprob(lm, ids[max(0, b - T - 1) : a], ids[a:b])
        assert s["resps"][0][0] == pytest.approx(direct, abs=1e-3)
        total_ll += direct
        words += len(re.split(r"\s+", doc["text"]))  # the harness's word count (a trailing space counts one)
    assert len(lm.encode(DOCS[2]["text"])) > lm.max_length  # the rolling path was exercised
    assert out["results"]["lv_rolling"]["word_perplexity,none"] == pytest.approx(math.exp(-total_ll / words), rel=1e-3)


def test_generate_until_is_the_greedy_continuation_cut_at_the_stop_string(evaluated):
    lm, out = evaluated
    samples = sorted(out["samples"]["lv_gen"], key=lambda s: s["doc_id"])
    for s, doc in zip(samples, DOCS):
        ids = lm.encode(doc["question"])
        for _ in range(6):  # greedy, no cache: argmax of the full forward
            with torch.no_grad():
                nxt = int(lm.net(torch.tensor([ids]))[0, -1].argmax())
            if nxt == lm.eot:
                break
            ids.append(nxt)
        direct = lm.tok.decode(ids[len(lm.encode(doc["question"])) :]).split(".")[0]
        assert s["resps"][0][0] == direct


@pytest.mark.slow
def test_a_non_text_run_is_refused(tmp_path, monkeypatch):
    from lit_vattn.tools.lm_eval_adapter import LitVattnLM

    ckpt = tiny_run("music", tmp_path, monkeypatch)
    with pytest.raises(ValueError, match="lm-eval scores text; this run's data is MusicDataModule"):
        LitVattnLM(ckpt_path=str(ckpt))
