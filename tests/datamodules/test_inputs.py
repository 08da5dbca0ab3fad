"""What the data modules take from a user's files: the shard cache follows the files, small folders
work with the defaults, audio limits apply before decoding, a missing optional stack is named with
its install command, and data errors come before the model is built."""

import shutil

import helpers
import numpy as np
import pytest
from helpers import CPU, QUIET, TEXT

from datamodules import AcousticDataModule, MusicDataModule, TextDataModule, shards
from lit_vattn.train.cli import cli_main

TINY = [*helpers.TINY, *QUIET]


def fit(*extra: str) -> None:
    cli_main(["fit", "--config", TEXT, "--config", CPU, *TINY, "--trainer.limit_val_batches", "0", *extra])


def test_text_folder_edits_change_the_shard_key_and_copies_keep_it(tmp_path):
    d = tmp_path / "corpus"
    helpers.text_folder(d, 12)

    def key(folder):
        return TextDataModule(
            source="files",
            files=[str(folder)],
            tokenizer="bpe",
            bpe_vocab_size=300,
            cache_dir=str(tmp_path / "c"),
        ).shard_dir.name

    k0 = key(d)
    (d / "new.txt").write_text("an added document")
    k1 = key(d)
    (d / "doc03.txt").write_text("an edited document, of another length")
    k2 = key(d)
    (d / "new.txt").unlink()
    k3 = key(d)
    assert len({k0, k1, k2, k3}) == 4
    shutil.copytree(d, tmp_path / "elsewhere" / "corpus")  # same relative paths, sizes, mtimes
    assert key(tmp_path / "elsewhere" / "corpus") == k3


def test_music_and_audio_folder_edits_change_the_shard_key(tmp_path):
    import soundfile as sf
    from test_music_data import _midi_with_notes

    m, a = tmp_path / "midi", tmp_path / "audio"
    m.mkdir()
    a.mkdir()
    for i in range(4):
        _midi_with_notes(m / f"p{i}.mid", 10 + i)
        sf.write(str(a / f"c{i}.wav"), np.random.default_rng(i).normal(0, 0.1, 24000).astype(np.float32), 24000)
    mkey = lambda: MusicDataModule(source="files", files=[str(m)], cache_dir=str(tmp_path / "c")).shard_dir.name  # noqa: E731

    def akey():
        return AcousticDataModule(
            source="files",
            files=[str(a)],
            codec_weights="random",
            cache_dir=str(tmp_path / "c"),
        ).shard_dir.name

    keys_m, keys_a = [mkey()], [akey()]
    _midi_with_notes(m / "added.mid", 5)
    sf.write(str(a / "added.wav"), np.zeros(2400, np.float32), 24000)
    keys_m.append(mkey())
    keys_a.append(akey())
    _midi_with_notes(m / "p0.mid", 30)  # edited: another size
    sf.write(str(a / "c0.wav"), np.zeros(4800, np.float32), 24000)
    keys_m.append(mkey())
    keys_a.append(akey())
    (m / "added.mid").unlink()
    (a / "added.wav").unlink()
    keys_m.append(mkey())
    keys_a.append(akey())
    assert len(set(keys_m)) == 4 and len(set(keys_a)) == 4


def test_a_small_folder_gets_every_split_with_the_default_fractions(in_tmp):
    helpers.text_folder(in_tmp / "twelve", 12)
    assign = shards.split_keys([f"doc{i:02d}.txt" for i in range(12)], 0.01, 0.01)
    assert sorted(assign.values()).count("val") == 1 and sorted(assign.values()).count("test") == 1
    fit(
        "--data.init_args.source",
        "files",
        "--data.init_args.files",
        f"[{in_tmp / 'twelve'}]",
        "--data.init_args.bpe_vocab_size",
        "300",
        "--trainer.max_steps",
        "2",
    )
    assert (in_tmp / "runs/text-vanilla/checkpoints/last.ckpt").exists()


def test_audio_files_honour_seconds_and_max_clips_before_decoding(tmp_path, monkeypatch):
    import soundfile as sf

    from datamodules import audio_sources

    d = tmp_path / "audio"
    d.mkdir()
    for i in range(10):  # ten 1-second files
        sf.write(str(d / f"c{i}.wav"), np.random.default_rng(i).normal(0, 0.1, 24000).astype(np.float32), 24000)
    picked = audio_sources.select_files([str(d)], seconds=3.5, max_clips=None, seed=0, skipped=[])
    assert len(picked) == 4  # 4 s >= 3.5 s, chosen from the headers
    assert len(audio_sources.select_files([str(d)], seconds=None, max_clips=2, seed=0, skipped=[])) == 2
    assert picked == audio_sources.select_files([str(d)], seconds=3.5, max_clips=None, seed=0, skipped=[])  # seeded
    decoded = []
    real = audio_sources.read_audio
    monkeypatch.setattr(audio_sources, "read_audio", lambda p: decoded.append(p) or real(p))
    list(audio_sources.file_clips(picked, []))
    assert sorted(decoded) == sorted(p for p, _ in picked)  # nothing else was decoded


def test_a_missing_optional_stack_is_named_with_its_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "miditok" else real(name, *a))
    with pytest.raises(ImportError, match=r'MusicDataModule needs miditok: pip install -e "\.\[music\]"'):
        MusicDataModule()


def test_data_errors_come_before_the_model_is_built(in_tmp, monkeypatch):
    import lit_vattn.train.module

    def no_model(*a, **k):
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr(lit_vattn.train.module, "GPT", no_model)
    (in_tmp / "empty").mkdir()
    (in_tmp / "one").mkdir()
    (in_tmp / "one" / "only.txt").write_text("a single document")
    files = ["--data.init_args.source", "files", "--data.init_args.files"]
    with pytest.raises(ValueError, match="no text files found"):  # jsonargparse passes the data's error on
        fit(*files, f"[{in_tmp / 'empty'}]")
    with pytest.raises(ValueError, match="would be empty.*sample_by=paragraph"):
        fit(*files, f"[{in_tmp / 'one'}]")


def test_the_data_digest_names_the_content_and_is_kept_beside_the_shards(tmp_path):
    """Same tokens, same digest wherever prepared; one token changed, another digest (the token counts
    alone would not tell); the digest is kept in digest.json and read back."""

    def write(d, last: int):
        w = shards.ShardWriter(d, 16)
        for split in shards.SPLITS:
            w.add(split, [1, 2, 3, last])
        w.commit({}, np.ones(16))
        return d

    a, b, c = write(tmp_path / "a", 4), write(tmp_path / "b", 4), write(tmp_path / "c", 5)
    assert shards.digest(a) == shards.digest(b) != shards.digest(c)
    assert shards.load_meta(a)["splits"] == shards.load_meta(c)["splits"]
    assert (a / "digest.json").is_file()
    (a / "train.bin").write_bytes(b"")  # a kept digest is not recomputed
    assert shards.digest(a) == shards.digest(b)


def test_each_test_window_belongs_to_the_document_of_its_first_target():
    import numpy as np

    from datamodules.windows import EvalWindows, window_documents

    end = 9
    # documents of 5, 3 and 12 tokens, each ending with the end id
    tokens = np.array([1, 2, 3, 4, end, 5, 6, end, *range(11, 22), end], dtype=np.uint16)
    docs = window_documents(tokens, 4, end)
    assert list(docs) == EvalWindows(tokens, 4).starts
    # window 0 scores tokens 1..4 (document 0), window 4 scores 5..8 (the end of document 0 is token 4: document 1 from 5)
    assert docs == {0: 0, 4: 1, 8: 2, 12: 2, 15: 2}
