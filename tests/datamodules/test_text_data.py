"""Real corpus text through the text DataModule: shards, cache, round trips, windows, bad input."""

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from datamodules import TextDataModule, shards
from datamodules.text_tokenizers import GPT2Tokenizer
from datamodules.windows import IGNORE, EvalWindows, TrainWindows


def test_gpt2_bpe_is_the_real_one():
    tok = GPT2Tokenizer()
    assert tok.encode_batch(["Hello world"]) == [[15496, 995]]  # OpenAI GPT-2 ids
    assert tok.eot_id == 50256
    text = "In the beginning God created the heaven and the earth. Naïve café — 42!"
    assert tok.decode(tok.encode_batch([text])[0]) == text


def test_embedded_corpus_gpt2_shards_written_reused_and_decoded(tmp_path):
    dm = TextDataModule(tokenizer="gpt2", max_documents=3000, seq_len=64, cache_dir=str(tmp_path))
    dm.prepare_data()
    d = dm.shard_dir
    assert {p.name for p in d.iterdir()} >= {"train.bin", "val.bin", "test.bin", "meta.json", "units.npy"}
    meta = shards.load_meta(d)
    assert meta["vocab_size"] == 50257 and meta["dtype"] == "uint16" and meta["unit"] == "byte"
    assert meta["tokenizer"] == {"kind": "gpt2", "vocab_size": 50257}
    assert sum(s["documents"] for s in meta["splits"].values()) == 3000
    dm.setup()
    units = dm.units_per_token.numpy()
    for split in shards.SPLITS:  # bytes from the per-token table == bytes of the source documents
        toks = np.asarray(dm._data[split])
        assert len(toks) == meta["splits"][split]["tokens"] > 0
        assert units[toks].sum() == meta["unit_counts"][split]
    # decoded shards are the corpus text: the first training document, byte for byte
    from datamodules.text_sources import embedded_documents

    first = next(t for k, t in embedded_documents() if shards.split_of(k, 0.01, 0.01) == "train")
    toks = np.asarray(dm._data["train"][:5000])
    eot = int(np.flatnonzero(toks == meta["eot_id"])[0])
    assert dm.decode(toks[:eot]) == first
    # reuse: a second DataModule with the same settings finds the same directory and rewrites nothing
    mtime = (d / "train.bin").stat().st_mtime_ns
    dm2 = TextDataModule(tokenizer="gpt2", max_documents=3000, seq_len=32, batch_size=2, cache_dir=str(tmp_path))
    assert dm2.shard_dir == d
    dm2.prepare_data()
    assert (d / "train.bin").stat().st_mtime_ns == mtime
    # different tokenizer settings -> a different cache key
    assert TextDataModule(tokenizer="bpe", max_documents=3000, cache_dir=str(tmp_path)).shard_dir != d
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_trained_bpe_round_trip(bpe_text):
    meta = bpe_text.meta
    assert meta["tokenizer"] == {"kind": "bpe", "vocab_size": 8192}
    assert (bpe_text.shard_dir / "tokenizer.json").exists()
    # the whole corpus is there: ~5 M GPT-2 tokens is ~6 M tokens of an 8k BPE
    assert meta["splits"]["train"]["tokens"] > 4_000_000
    tok = bpe_text.tokenizer
    sample = "And God said, Let there be light: and there was light."
    assert tok.decode(tok.encode_batch([sample])[0]) == sample
    units = bpe_text.units_per_token.numpy()
    for split in shards.SPLITS:
        assert units[np.asarray(bpe_text._data[split])].sum() == meta["unit_counts"][split]


def test_train_windows_seeded_disjoint_across_ranks_and_resumable(bpe_text):
    toks = bpe_text._data["train"]
    T = 32
    a = TrainWindows(toks, T, seed=7)
    b = TrainWindows(toks, T, seed=7)
    assert [a[k]["index"] for k in range(50)] == [b[k]["index"] for k in range(50)]
    assert all((a[k]["input"] == b[k]["input"]).all() for k in range(20))
    x = a[3]
    assert (x["input"][1:] == x["target"][:-1]).all()  # targets are inputs shifted by one
    r0, r1 = TrainWindows(toks, T, 7, 0, 2), TrainWindows(toks, T, 7, 1, 2)
    s0 = {r0.start_of(r0[k]["index"]) for k in range(200)}
    s1 = {r1.start_of(r1[k]["index"]) for k in range(200)}
    assert not s0 & s1  # ranks draw disjoint windows
    starts = sorted(s0 | s1)
    assert all(q - p >= T for p, q in zip(starts, starts[1:]))  # non-overlapping within an epoch


def test_eval_windows_score_every_target_once():
    toks = np.arange(1000, dtype=np.uint16)
    for world in (1, 3):
        scored = []
        for rank in range(world):
            ds = EvalWindows(toks, 64, rank, world)
            for i in range(len(ds)):
                item = ds[i]
                y = item["target"]
                scored += y[y != IGNORE].tolist()
        assert sorted(scored) == list(range(1, 1000))


def test_missing_files_and_folders_without_data_are_rejected_at_construction(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        TextDataModule(source="files", files=[str(tmp_path / "nope.txt")], cache_dir=str(tmp_path))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"")  # hidden files are not data
    with pytest.raises(FileNotFoundError, match="no text files found"):
        TextDataModule(source="files", files=[str(tmp_path / "empty")], cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="data.files"):
        TextDataModule(source="files")
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # nothing half-written


def _folder_with_strays(d: Path) -> None:
    for i in range(40):
        (d / f"doc{i:02d}.txt").write_text(f"Document {i} tells of the harvest in the valley of {i % 5}. " * 8)
    (d / ".DS_Store").write_bytes(b"")
    (d / ".git").mkdir()
    (d / ".git" / "HEAD").write_bytes(b"\xff\xfe binary in a hidden folder")
    (d / "picture.txt").write_bytes(bytes(range(256)) * 4)  # not UTF-8
    (d / "blank.txt").write_text("  \n")


def test_unreadable_and_empty_text_files_are_skipped_and_listed_and_hidden_ones_never_read(tmp_path, caplog):
    import logging

    d = tmp_path / "corpus"
    d.mkdir()
    _folder_with_strays(d)
    dm = TextDataModule(
        source="files", files=[str(d)], tokenizer="bpe", bpe_vocab_size=300, seq_len=16, cache_dir=str(tmp_path / "c")
    )
    with caplog.at_level(logging.WARNING):
        dm.prepare_data()
    assert "skipped 2 unreadable or empty text files" in caplog.text
    assert "picture.txt (not UTF-8" in caplog.text and "blank.txt (empty)" in caplog.text
    assert ".DS_Store" not in caplog.text and ".git" not in caplog.text
    dm.setup()
    assert sum(s["documents"] for s in dm.meta["splits"].values()) == 40


def test_on_bad_file_error_names_the_file_before_the_tokenizer_is_trained(tmp_path, monkeypatch):
    from datamodules.text_tokenizers import TrainedBPE

    d = tmp_path / "corpus"
    d.mkdir()
    _folder_with_strays(d)
    # the files are read once, as the trainer counts words: the error comes from that read, before any merge
    monkeypatch.setattr(
        TrainedBPE, "train", lambda self, texts: (list(texts), pytest.fail("the BPE merged before the check"))
    )
    dm = TextDataModule(
        source="files",
        files=[str(d)],
        tokenizer="bpe",
        bpe_vocab_size=300,
        on_bad_file="error",
        cache_dir=str(tmp_path / "c"),
    )
    with pytest.raises(ValueError, match=r"(picture|blank)\.txt.*data\.on_bad_file=skip"):
        dm.prepare_data()
    assert not [p for p in (tmp_path / "c").iterdir() if not p.name.endswith(".lock")]  # no shard, no temporary
    with pytest.raises(ValueError, match="on_bad_file must be 'skip' or 'error'"):
        TextDataModule(on_bad_file="ignore", cache_dir=str(tmp_path / "c"))


def test_a_misplaced_or_read_only_cache_is_named_by_its_variable(tmp_path, monkeypatch):
    f = tmp_path / "a-file"
    f.write_text("")
    monkeypatch.setenv("LIT_VATTN_CACHE", str(f / "cache"))
    with pytest.raises(NotADirectoryError, match="is a file, not a directory; set LIT_VATTN_CACHE"):
        TextDataModule()
    monkeypatch.setenv("LIT_VATTN_CACHE", str(tmp_path / "ro" / "cache"))
    (tmp_path / "ro").mkdir()
    dm = TextDataModule()
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as on a read-only filesystem (root ignores modes)
    with pytest.raises(PermissionError, match="is not writable.*set LIT_VATTN_CACHE"):
        dm.prepare_data()


def test_too_few_documents_names_the_empty_split(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("just one document")
    with pytest.raises(ValueError, match="'val', 'test' would be empty.*val_fraction.*sample_by"):
        TextDataModule(source="files", files=[str(f)], cache_dir=str(tmp_path))  # at construction, before any step
    assert [p.name for p in tmp_path.iterdir() if p.suffix != ".lock"] == ["one.txt"]  # no shard, no temporary


def test_unknown_hf_dataset_offline_fails_fast_with_its_name(tmp_path):
    import time

    t = time.time()
    with pytest.raises(ValueError, match="no-such-user/no-such-dataset.*offline"):
        TextDataModule(source="no-such-user/no-such-dataset", cache_dir=str(tmp_path)).prepare_data()
    assert time.time() - t < 20


def test_local_files_paragraphs(tmp_path):
    f = tmp_path / "corpus.txt"
    paras = [f"Paragraph number {i} says something about the weather in town {i % 7}." for i in range(400)]
    f.write_text("\n\n".join(paras))
    dm = TextDataModule(source="files", files=[str(f)], sample_by="paragraph", seq_len=16, cache_dir=str(tmp_path))
    dm.prepare_data()
    dm.setup()
    meta = dm.meta
    assert sum(s["documents"] for s in meta["splits"].values()) == 400
    assert sum(meta["unit_counts"].values()) == sum(len(p.encode()) for p in paras)


def test_crash_during_preparation_leaves_nothing(tmp_path, monkeypatch):
    dm = TextDataModule(tokenizer="gpt2", max_documents=500, cache_dir=str(tmp_path))

    def boom(self, texts):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(GPT2Tokenizer, "encode_batch", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        dm.prepare_data()
    assert [p for p in os.listdir(tmp_path) if not p.endswith(".lock")] == []  # the lock file holds no data


def test_processes_preparing_the_same_shards_at_once_tokenize_once(tmp_path, monkeypatch):
    """Runs started together on empty shards (reproduce --parallel) take turns on the shards'
    lock: one tokenizes, the other waits and reads the same shards. Two threads here, each with its
    own DataModule and its own handle on the lock file, as two processes would have."""
    f = tmp_path / "corpus.txt"
    f.write_text("\n\n".join(f"Paragraph {i} is about the harbour at {i % 5}." for i in range(300)))
    real, calls = TextDataModule.write_shards, []

    def slow(self, writer):
        calls.append(threading.get_ident())
        time.sleep(0.5)  # the second caller arrives while the first is still writing
        return real(self, writer)

    monkeypatch.setattr(TextDataModule, "write_shards", slow)
    dms = [
        TextDataModule(
            source="files", files=[str(f)], sample_by="paragraph", seq_len=16, cache_dir=str(tmp_path / "cache")
        )
        for _ in range(2)
    ]
    threads = [threading.Thread(target=dm.prepare_data) for dm in dms]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    for dm in dms:
        dm.setup()
    assert np.array_equal(dms[0]._data["train"], dms[1]._data["train"])
    assert not [p for p in (tmp_path / "cache").iterdir() if ".tmp-" in p.name]
