"""Real tunes through the music DataModule: shards, notes, MIDI round trips, bad files, BPE."""

import logging
import math

import numpy as np
import pytest
import torch

from datamodules import MusicDataModule, shards
from lit_vattn.train.metrics import NLLMetrics


@pytest.fixture(scope="module")
def music(shard_cache):
    dm = MusicDataModule(max_pieces=1000, val_fraction=0.1, test_fraction=0.1, seq_len=128)  # the shared test cache
    dm.prepare_data()
    dm.setup()
    return dm


def pieces(dm, split):
    """Token sequences of each piece between BOS and EOS."""
    toks = np.asarray(dm._data[split])
    bos, eos = dm.meta["bos_id"], dm.meta["eos_id"]
    starts, ends = np.flatnonzero(toks == bos), np.flatnonzero(toks == eos)
    return [toks[s + 1 : e] for s, e in zip(starts, ends)]


def test_shards_written_reused_and_notes_counted(music):
    meta = music.meta
    assert meta["unit"] == "note" and meta["vocab_size"] == music.vocab_size == 549
    assert sum(s["documents"] for s in meta["splits"].values()) == 1000
    units = music.units_per_token.numpy()
    for split in shards.SPLITS:
        seqs = pieces(music, split)
        assert len(seqs) == meta["splits"][split]["documents"] > 0
        assert units[np.asarray(music._data[split])].sum() == meta["unit_counts"][split]
        # a note is a Pitch token: decoding the tokens gives exactly that many notes
        notes = sum(music.decode(s).note_num() for s in seqs[:30])
        assert notes == sum(units[s].sum() for s in seqs[:30])
    mtime = (music.shard_dir / "train.bin").stat().st_mtime_ns
    again = MusicDataModule(max_pieces=1000, val_fraction=0.1, test_fraction=0.1, cache_dir=str(music.cache_dir))
    again.prepare_data()
    assert again.shard_dir == music.shard_dir and (music.shard_dir / "train.bin").stat().st_mtime_ns == mtime


def test_tokens_to_midi_file_and_back(music, tmp_path):
    import symusic

    seq = pieces(music, "train")[0]
    path = music.to_midi(seq, str(tmp_path / "piece.mid"))
    score = symusic.Score(str(path))
    assert score.note_num() == music.decode(seq).note_num() > 0
    assert list(music.tokenizer.encode(score).ids) == list(seq)  # MIDI file -> same tokens


def test_bits_per_note_equals_hand_computation(music):
    """Uniform predictions: every target costs log2(V) bits; divide by the notes behind the targets."""
    m = NLLMetrics()
    V = music.vocab_size
    total_bits, notes = 0.0, 0.0
    units = music.units_per_token
    for batch in music.val_dataloader():
        y = batch["target"]
        n = (y >= 0).sum()
        m.update(torch.tensor(float(n) * math.log(V)), y, units)
        total_bits += float(n) * math.log2(V)
        notes += units[y[y >= 0]].sum().item()
    out = m.compute("note")
    assert out["bits_per_note"] == pytest.approx(total_bits / notes, rel=1e-6)
    assert notes == pytest.approx(music.meta["unit_counts"]["val"])  # eval windows cover the split once


def _midi_with_notes(path, n_notes):
    import symusic

    s = symusic.Score(480)
    t = symusic.Track(program=0)
    for i in range(n_notes):
        t.notes.append(symusic.Note(i * 480, 400, 60 + i % 12, 80))
    s.tracks.append(t)
    s.dump_midi(str(path))


def test_bad_midi_files_are_skipped_with_names_and_counted(tmp_path, caplog):
    d = tmp_path / "midi"
    d.mkdir()
    for i in range(30):
        _midi_with_notes(d / f"good{i:02d}.mid", 40 + i)
    (d / "corrupt.mid").write_bytes(b"MThd this is not a midi file")
    (d / "empty.mid").write_bytes(b"")
    _midi_with_notes(d / "silent.mid", 0)
    dm = MusicDataModule(
        source="files",
        files=[str(d)],
        val_fraction=0.2,
        test_fraction=0.2,
        seq_len=32,
        cache_dir=str(tmp_path / "cache"),
    )
    with caplog.at_level(logging.WARNING):
        dm.prepare_data()
    assert "skipped 3" in caplog.text
    for name in ("corrupt.mid", "empty.mid", "silent.mid"):
        assert name in caplog.text
    dm.setup()
    assert dm.meta["skipped"] == 3
    assert sum(s["documents"] for s in dm.meta["splits"].values()) == 30


def test_hidden_files_are_not_data_and_on_bad_file_error_names_the_file(tmp_path):
    d = tmp_path / "midi"
    d.mkdir()
    for i in range(12):
        _midi_with_notes(d / f"good{i:02d}.mid", 20 + i)
    (d / ".hidden.mid").write_bytes(b"MThd not a midi file, and hidden")

    def strict():
        kw = dict(val_fraction=0.2, test_fraction=0.2, seq_len=32, cache_dir=str(tmp_path / "c"))
        return MusicDataModule(source="files", files=[str(d)], on_bad_file="error", **kw)

    dm = strict()
    dm.prepare_data()  # the hidden file is never read, so "error" has nothing to object to
    dm.setup()
    assert dm.meta["skipped"] == 0 and sum(s["documents"] for s in dm.meta["splits"].values()) == 12
    (d / "corrupt.mid").write_bytes(b"MThd this is not a midi file")
    dm = strict()
    with pytest.raises(ValueError, match=r"corrupt\.mid.*data\.on_bad_file=skip"):
        dm.prepare_data()


def test_nothing_usable_fails_clearly(tmp_path):
    d = tmp_path / "midi"
    d.mkdir()
    for i in range(3):
        (d / f"corrupt{i}.mid").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="no usable music pieces"):
        MusicDataModule(source="files", files=[str(d)], cache_dir=str(tmp_path / "c")).prepare_data()
    with pytest.raises(FileNotFoundError, match="nope"):
        MusicDataModule(source="files", files=[str(tmp_path / "nope")], cache_dir=str(tmp_path / "c")).prepare_data()
    with pytest.raises(ValueError, match="not a miditok tokenizer"):
        MusicDataModule(tokenizer="NoSuchTokenizer")
    assert not [p for p in (tmp_path / "c").iterdir() if ".tmp-" in p.name]


def test_bpe_trained_on_the_training_split(tmp_path):
    dm = MusicDataModule(
        max_pieces=150, val_fraction=0.1, test_fraction=0.1, bpe_vocab_size=800, seq_len=64, cache_dir=str(tmp_path)
    )
    dm.prepare_data()
    dm.setup()
    assert dm.vocab_size == 800 and dm.tokenizer.is_trained
    units = dm.units_per_token.numpy()
    assert units.max() > 1  # merged tokens carry several notes
    seqs = pieces(dm, "val")
    assert sum(dm.decode(s).note_num() for s in seqs) == sum(units[s].sum() for s in seqs)


@pytest.mark.slow
def test_full_source_converts_kern_and_musicxml_scores_once(tmp_path, monkeypatch):
    """source="full" runs music21 on kern/MusicXML scores in worker processes, caches the MIDI, and
    puts those pieces in the shards next to the ABC tunes (a capped run keeps a quarter of each)."""
    from datamodules.music_sources import score_files, score_pieces

    common = dict(max_pieces=12, val_fraction=0.3, test_fraction=0.3, seq_len=64, cache_dir=str(tmp_path))
    full, abc = MusicDataModule(source="full", **common), MusicDataModule(**{**common, "max_pieces": 9})
    for dm in (full, abc):
        dm.prepare_data()
        dm.setup()
    cached = sorted((tmp_path / "music21-midi").glob("*.mid"))
    assert len(cached) == 3 and len(score_files(3)) == 3
    docs = lambda dm: sum(s["documents"] for s in dm.meta["splits"].values())  # noqa: E731
    assert docs(full) == 12 and docs(abc) == 9
    # the three scores add exactly the notes their own tokens carry; reading them again converts nothing
    units = full.units_per_token.numpy()
    import multiprocessing

    monkeypatch.setattr(multiprocessing, "get_context", lambda *a: pytest.fail("converted a cached score again"))
    scores = [score for _, _, score in score_pieces(tmp_path / "music21-midi", max_files=3)]
    assert all(s.note_num() > 0 for s in scores)
    extra = sum(units[full._ids(full.tokenizer, s)].sum() for s in scores)
    notes = lambda dm: sum(dm.meta["unit_counts"].values())  # noqa: E731
    assert extra > 0 and notes(full) == pytest.approx(notes(abc) + extra)
