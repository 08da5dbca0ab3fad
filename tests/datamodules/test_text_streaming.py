"""Text preparation as a stream: the split of a stream equals the split of the whole list, memory does
not grow with the corpus, and the WikiText-103 preset runs offline on a local copy in the hub's layout."""

import random
import tracemalloc

import numpy as np
import pytest
import yaml
from helpers import CPU, QUIET, ROOT, TINY, wikitext_folder

from datamodules import TextDataModule, shards

WIKITEXT = ROOT / "configs/data/wikitext103.yaml"


@pytest.mark.parametrize("seed", range(40))
def test_a_stream_of_keys_splits_as_the_whole_list(seed):
    """KeySplitter sees each key once, in order, keeping three; it gives split_keys' answer, small-source
    rule (lowest train keys to an empty val or test split) and repeated keys included."""
    rng = random.Random(seed)
    keys = [f"doc{rng.randrange(40)}" for _ in range(rng.randint(1, 30))]
    fractions = (rng.choice([0.01, 0.05, 0.2]), rng.choice([0.01, 0.05, 0.2]))
    splitter = shards.KeySplitter(*fractions)
    streamed = {k: splitter.assign(k) for k in keys}
    streamed.update(splitter.moves())
    assert streamed == shards.split_keys(keys, *fractions)


def test_moved_documents_leave_their_split_in_order(tmp_path):
    writer = shards.ShardWriter(tmp_path / "s", vocab_size=100)
    for i in range(6):
        writer.add("train", [i] * (i + 1))  # document i: i + 1 copies of i, at offset i(i+1)/2
    writer.move_documents("train", {"val": [(1, 2)], "test": [(6, 4), (10, 5)]})  # documents 1 | 3, 4
    writer.add("train", [9])
    writer.commit({}, np.ones(100))
    data = {s: list(shards.open_split(tmp_path / "s", s)) for s in shards.SPLITS}
    assert data == {"train": [0, 2, 2, 2, 5, 5, 5, 5, 5, 5, 9], "val": [1, 1], "test": [3] * 4 + [4] * 5}
    meta = shards.load_meta(tmp_path / "s")["splits"]
    assert {s: (m["tokens"], m["documents"]) for s, m in meta.items()} == {
        "train": (11, 4),
        "val": (2, 1),
        "test": (9, 2),
    }


def preset_data(source) -> dict:
    return {**yaml.safe_load(WIKITEXT.read_text())["data"]["init_args"], "source": str(source)}


@pytest.mark.slow
def test_wikitext_articles_keep_the_datasets_splits_and_bytes(tmp_path):
    """The preset's options on a local dataset in the hub's layout: one document per article (its
    section headings inside it), the dataset's own splits, and bits/byte over the articles' bytes."""
    folder = wikitext_folder(tmp_path / "wikitext", {"train": 20, "validation": 3, "test": 4})
    dm = TextDataModule(**{**preset_data(folder), "seq_len": 64}, cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup()
    meta = dm.meta
    assert {s: m["documents"] for s, m in meta["splits"].items()} == {"train": 20, "val": 3, "test": 4}
    import pyarrow.parquet as pq

    lines = pq.read_table(folder / "wikitext-103-raw-v1/test-00000-of-00001.parquet")["text"].to_pylist()
    assert meta["unit_counts"]["test"] == len("".join(lines).encode()) - 4  # each article's last newline dropped
    test = np.asarray(dm._data["test"])
    first = dm.decode(test[: int(np.flatnonzero(test == meta["eot_id"])[0])])
    assert first.startswith(" = ") and " = = Part 1 = = " in first and " = = Part 2 = = " in first


@pytest.mark.slow
def test_wikitext_preset_runs_fit_offline_on_a_local_copy(tmp_path, monkeypatch):
    """The shipped preset (its data and budget; a 2-layer model and batches of 4, since the preset's 49 M
    parameters and 32 windows take a minute on a CPU) with its source pointed at the local copy; its runs are kept apart from the embedded
    corpus's. A training split smaller than one batch is an error, not a run that trains nothing."""
    from lit_vattn.train.cli import cli_main

    folder = wikitext_folder(tmp_path / "wikitext", {"train": 60, "validation": 3, "test": 4})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIT_VATTN_CACHE", str(tmp_path / "cache"))
    model = [a for i, a in enumerate(TINY) if "model" in TINY[i - (i % 2)]]  # the model shape only
    args = ["--config", str(WIKITEXT), "--config", CPU, *model, *QUIET, "--data.init_args.source", str(folder)]
    args += ["--data.init_args.batch_size", "4"]  # 32 x 512 x 50,257 logits are 3.3 GB
    cli = cli_main(["fit", *args, "--trainer.fast_dev_run", "true"])
    assert cli.trainer.global_step == 1
    assert (tmp_path / "runs/wikitext103/text-vanilla").is_dir()
    with pytest.raises(ValueError, match="fewer than one batch.*data.batch_size=4096"):
        cli_main(["fit", *args, "--trainer.fast_dev_run", "true", "--data.init_args.batch_size", "4096"])


def corpus_rows(n_bytes: int) -> list[str]:
    from datamodules.text_sources import embedded_documents

    rows, size = [], 0
    for _, text in embedded_documents():
        rows.append(text)
        size += len(text)
        if size >= n_bytes:
            return rows
    raise AssertionError("the embedded corpus is smaller than asked")


def peak_python_memory(rows: list[str], tmp_path, name: str) -> int:
    """Peak Python heap (tracemalloc) while preparing ``rows`` as a one-column local dataset, streamed,
    in parquet files of ~256 KB (as the hub shards a dataset: ``datasets`` holds one file at a time)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / name
    folder.mkdir()
    n = -(-sum(map(len, rows)) // (256 << 10))
    for i in range(n):
        pq.write_table(pa.table({"text": rows[i::n]}), folder / f"train-{i:05d}.parquet", row_group_size=64)
    dm = TextDataModule(source=str(folder), streaming=True, cache_dir=str(tmp_path / "cache"))
    tracemalloc.start()
    try:
        dm.prepare_data()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_preparation_memory_does_not_grow_with_the_corpus(tmp_path, monkeypatch):
    """With batches of 16 K characters, preparing 4 MB of text holds under 1.5 MiB (the corpus read
    whole would hold at least 4 MB of strings) and no more than preparing 1 MB does. The tokenizer is
    built once beforehand: its vocabulary is a constant, not part of the stream."""
    import datamodules.text
    from datamodules.text_tokenizers import GPT2Tokenizer

    tok = GPT2Tokenizer()
    monkeypatch.setattr(GPT2Tokenizer, "__new__", lambda cls: tok)
    monkeypatch.setattr(GPT2Tokenizer, "__init__", lambda self: None)
    monkeypatch.setattr(datamodules.text, "BATCH_CHARS", 1 << 14)
    peak_python_memory(corpus_rows(1 << 16), tmp_path, "warm")  # imports of the first streamed read
    small = peak_python_memory(corpus_rows(1 << 20), tmp_path, "small")
    large = peak_python_memory(corpus_rows(4 << 20), tmp_path, "large")
    assert large < 3 << 19, f"peak {large / 2**20:.2f} MiB for 4 MB of text"
    assert large < 1.5 * small + (128 << 10), (small, large)


def test_a_local_dataset_folder_splits_by_its_name_and_its_files(tmp_path):
    """Moving a local dataset folder keeps its documents' splits; editing a file gives new shards."""
    import shutil

    a = wikitext_folder(tmp_path / "a/wiki", {"train": 3}, paragraphs=1)
    b = tmp_path / "b/wiki"
    shutil.copytree(a, b)
    from datamodules.text_sources import hf_documents

    assert [k for k, _ in hf_documents(str(a), None, "text", True, None)["all"]] == [
        k for k, _ in hf_documents(str(b), None, "text", True, None)["all"]
    ]
    key = TextDataModule(source=str(a), cache_dir=str(tmp_path / "cache")).shard_dir
    (a / "README.md").write_text((a / "README.md").read_text() + "\n")
    assert TextDataModule(source=str(a), cache_dir=str(tmp_path / "cache")).shard_dir != key


KILLED_AT_BATCH = """
import os, signal, sys
import datamodules.text
from datamodules import TextDataModule
from datamodules.text_tokenizers import GPT2Tokenizer
datamodules.text.BATCH_CHARS, datamodules.text.CHECKPOINT_SECONDS = 1 << 14, 0
encode, calls = GPT2Tokenizer.encode_batch, []
def dying(self, texts):
    calls.append(1)
    if len(calls) == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a lost node: no cleanup runs
    return encode(self, texts)
GPT2Tokenizer.encode_batch = dying
TextDataModule(tokenizer="gpt2", max_documents=3000, cache_dir=sys.argv[1]).prepare_data()
"""


def counting_batches(monkeypatch, cls) -> list:
    calls, encode = [], cls.encode_batch

    def counted(self, texts):
        calls.append(len(texts))
        return encode(self, texts)

    monkeypatch.setattr(cls, "encode_batch", counted)
    return calls


@pytest.mark.slow
def test_a_killed_preparation_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """SIGKILL in the 20th batch: the next preparation takes the temporary directory over, tokenizes only
    what came after the last checkpoint, and writes the shards an uninterrupted preparation writes."""
    import os
    import subprocess
    import sys

    import datamodules.text
    from datamodules.text_tokenizers import GPT2Tokenizer

    killed = subprocess.run([sys.executable, "-c", KILLED_AT_BATCH, str(tmp_path / "a"), "20"], cwd=ROOT)
    assert killed.returncode == -9
    (left,) = [p for p in os.listdir(tmp_path / "a") if ".tmp-" in p]
    assert (tmp_path / "a" / left / shards.PROGRESS).is_file()
    monkeypatch.setattr(datamodules.text, "BATCH_CHARS", 1 << 14)
    batches = counting_batches(monkeypatch, GPT2Tokenizer)
    resumed = TextDataModule(tokenizer="gpt2", max_documents=3000, cache_dir=str(tmp_path / "a"))
    resumed.prepare_data()
    assert len(batches) < 25 and sum(batches) < 3000  # only the documents after the checkpoint (19 batches)
    whole = TextDataModule(tokenizer="gpt2", max_documents=3000, cache_dir=str(tmp_path / "b"))
    whole.prepare_data()
    assert shards.digest(resumed.shard_dir) == shards.digest(whole.shard_dir)
    assert shards.load_meta(resumed.shard_dir) == shards.load_meta(whole.shard_dir)
    assert [p for p in os.listdir(tmp_path / "a") if not p.endswith(".lock")] == [resumed.shard_dir.name]


@pytest.mark.slow
def test_a_preparation_stopped_by_ctrl_c_resumes_with_its_trained_bpe(tmp_path, monkeypatch):
    import datamodules.text
    from datamodules.text_tokenizers import TrainedBPE

    monkeypatch.setattr(datamodules.text, "BATCH_CHARS", 1 << 14)
    monkeypatch.setattr(datamodules.text, "CHECKPOINT_SECONDS", 0)
    settings = dict(tokenizer="bpe", bpe_vocab_size=500, max_documents=2000)
    encode = TrainedBPE.encode_batch

    def interrupted(self, texts):
        if interrupted.calls == 5:
            raise KeyboardInterrupt
        interrupted.calls += 1
        return encode(self, texts)

    interrupted.calls = 0
    monkeypatch.setattr(TrainedBPE, "encode_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        TextDataModule(**settings, cache_dir=str(tmp_path / "a")).prepare_data()
    monkeypatch.setattr(TrainedBPE, "encode_batch", encode)
    monkeypatch.setattr(TrainedBPE, "train", lambda *a: pytest.fail("the BPE saved before the checkpoint is reused"))
    resumed = TextDataModule(**settings, cache_dir=str(tmp_path / "a"))
    resumed.prepare_data()
    monkeypatch.undo()
    monkeypatch.setattr(datamodules.text, "BATCH_CHARS", 1 << 14)
    whole = TextDataModule(**settings, cache_dir=str(tmp_path / "b"))
    whole.prepare_data()
    assert shards.digest(resumed.shard_dir) == shards.digest(whole.shard_dir)
