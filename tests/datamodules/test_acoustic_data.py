"""Synthesised speech through the acoustic DataModule: codec, shards, round trips, bad audio."""

import logging
import math

import numpy as np
import pytest
import torch

from datamodules import AcousticDataModule, codec, shards
from datamodules.audio_sources import speech_clips
from lit_vattn.train.metrics import NLLMetrics


@pytest.fixture(scope="module")
def speech(shard_cache):
    dm = AcousticDataModule(
        seconds=150,
        kmeans_seconds=60,
        bandwidth=3.0,
        codec_weights="random",
        val_fraction=0.15,
        test_fraction=0.15,
        seq_len=300,
    )  # the shared test cache
    dm.prepare_data()
    dm.setup()
    return dm


def test_shards_codec_and_code_diversity(speech):
    meta = speech.meta
    assert meta["n_q"] == 4 and speech.vocab_size == 4 * 1024 + 1
    assert (speech.shard_dir / "codec.pt").exists()
    assert codec.checksum(codec.load(speech.shard_dir / "codec.pt", 3.0)) == meta["codec_checksum"]
    units = speech.units_per_token.numpy()
    for split in shards.SPLITS:
        assert units[np.asarray(speech._data[split])].sum() == pytest.approx(meta["unit_counts"][split])
    toks = np.asarray(speech._data["train"])
    codes = toks[toks != speech.eos_id]
    level0 = codes[codes < 1024]
    assert len(np.unique(level0)) >= 300  # several hundred distinct codes at level 0
    mtime = (speech.shard_dir / "train.bin").stat().st_mtime_ns
    again = AcousticDataModule(
        seconds=150,
        kmeans_seconds=60,
        bandwidth=3.0,
        codec_weights="random",
        val_fraction=0.15,
        test_fraction=0.15,
        cache_dir=str(speech.cache_dir),
    )
    assert again.shard_dir == speech.shard_dir
    again.prepare_data()
    assert (speech.shard_dir / "train.bin").stat().st_mtime_ns == mtime


def test_frame_major_layout_and_audio_round_trip(speech, tmp_path):
    import soundfile as sf

    codes = np.random.default_rng(0).integers(0, 1024, size=(4, 7))
    flat = codec.flatten(codes)
    assert flat[:4].tolist() == [codes[0, 0], 1024 + codes[1, 0], 2048 + codes[2, 0], 3072 + codes[3, 0]]
    assert np.array_equal(codec.unflatten(flat, 4), codes)
    with pytest.raises(ValueError, match="frame-aligned"):
        codec.unflatten(flat[1:], 4)
    toks = np.asarray(speech._data["train"])
    stream = toks[: int(np.flatnonzero(toks == speech.eos_id)[0])]  # the first utterance
    assert len(stream) % 4 == 0
    clip_codes = codec.unflatten(stream, 4)
    wav = speech.decode(stream)
    assert wav.shape[0] == clip_codes.shape[1] * 320 and np.isfinite(wav).all()
    # a random codec's decoder is untrained (the waveform is not the speech back; with pretrained
    # weights it is), but decoding is a deterministic function of the tokens
    assert np.array_equal(wav, speech.decode(stream)) and np.abs(wav).max() > 0
    out = speech.to_wav(stream, str(tmp_path / "clip.wav"))
    data, sr = sf.read(str(out))
    assert sr == 24000 and len(data) == len(wav)


def test_bits_per_second_equals_hand_computation(speech):
    m = NLLMetrics()
    V = speech.vocab_size
    bits, seconds = 0.0, 0.0
    for batch in speech.val_dataloader():
        y = batch["target"]
        n = (y >= 0).sum()
        m.update(torch.tensor(float(n) * math.log(V)), y, speech.units_per_token)
        bits += float(n) * math.log2(V)
        seconds += ((y >= 0) & (y != speech.eos_id)).sum().item() / (75 * 4)
    assert m.compute("second")["bits_per_second"] == pytest.approx(bits / seconds, rel=1e-6)
    first = int(speech._data["val"][0])  # the split's first token is input only, never a target
    assert seconds == pytest.approx(speech.meta["unit_counts"]["val"] - speech.units_per_token[first].item())


def test_uninitialised_codec_is_refused():
    model = codec.build("random", 6.0)
    with pytest.raises(ValueError, match="never initialised"):
        codec.check_initialised(model, 6.0)
    with pytest.raises(ValueError, match="single code at level 0"):
        codec.check_diversity(np.zeros((8, 500), dtype=np.int64))


def test_bad_audio_files_are_skipped_with_names(tmp_path, caplog):
    import soundfile as sf

    d = tmp_path / "audio"
    d.mkdir()
    for i, clip in enumerate(c[2] for c in speech_clips(45, seed=3)):
        sf.write(str(d / f"utt{i:02d}.flac"), clip, 24000)
    (d / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    sf.write(str(d / "silent.wav"), np.zeros(48000, np.float32), 16000)
    sf.write(str(d / "short.wav"), np.random.default_rng(0).normal(0, 0.1, 2400).astype(np.float32), 24000)
    dm = AcousticDataModule(
        source="files",
        files=[str(d)],
        bandwidth=1.5,
        codec_weights="random",
        kmeans_seconds=30,
        val_fraction=0.2,
        test_fraction=0.2,
        seq_len=64,
        cache_dir=str(tmp_path / "cache"),
    )
    with caplog.at_level(logging.WARNING):
        try:
            dm.prepare_data()
        except (
            ValueError
        ) as e:  # with this few utterances a split, or k-means, can lack audio; the skip report comes first
            assert "would be empty" in str(e) or "k-means needs at least" in str(e) and "data.val_fraction" in str(e)
    assert "skipped 3" in caplog.text
    for name in ("corrupt.wav", "silent.wav", "short.wav"):
        assert name in caplog.text


def test_nothing_usable_fails_clearly(tmp_path):
    import soundfile as sf

    d = tmp_path / "audio"
    d.mkdir()
    for i in range(3):
        sf.write(str(d / f"silent{i}.wav"), np.zeros(48000, np.float32), 24000)
    with pytest.raises(ValueError, match="no usable audio"):
        AcousticDataModule(
            source="files", files=[str(d)], codec_weights="random", cache_dir=str(tmp_path / "c")
        ).prepare_data()
    with pytest.raises(ValueError, match="bandwidth"):
        AcousticDataModule(bandwidth=5.0)


def test_token_shards_kept_with_records_train_on_a_fresh_cache_and_refuse_to_decode(speech, tmp_path):
    """Acoustic shards do not rebuild bit for bit, so a table's records keep their tokens; restored
    into another cache they are the same data (digest), load without preparing anything, and
    decoding (which needs the codec the records do not keep) fails with the reason."""
    from lit_vattn.experiments.records import keep_data, restore_data

    table = tmp_path / "records" / "acoustic-tiny"
    kept = keep_data(table, speech)
    assert kept == table / "data" / speech.shard_dir.name
    assert sorted(p.name for p in kept.iterdir()) == sorted(shards.TOKEN_FILES)  # tokens only: no codec.pt
    assert keep_data(table, speech) == kept  # kept once; a second keep leaves it as it is
    cache = tmp_path / "cache"
    assert restore_data(table, cache) == [cache / speech.shard_dir.name]
    assert restore_data(table, cache) == []  # already there
    fresh = AcousticDataModule(
        seconds=150,
        kmeans_seconds=60,
        bandwidth=3.0,
        codec_weights="random",
        val_fraction=0.15,
        test_fraction=0.15,
        seq_len=300,
        cache_dir=str(cache),
    )
    fresh.prepare_data()  # complete: nothing synthesised or encoded
    fresh.setup()
    assert fresh.data_digest == speech.data_digest
    assert np.array_equal(np.asarray(fresh._data["test"]), np.asarray(speech._data["test"]))
    with pytest.raises(FileNotFoundError, match="hold tokens only .* cannot be decoded to audio"):
        fresh.decode(np.asarray(fresh._data["test"][:16]))


def test_only_data_that_do_not_rebuild_exactly_are_kept(tmp_path):
    from datamodules import TextDataModule
    from lit_vattn.experiments.records import keep_data

    assert AcousticDataModule.rebuilds_exactly is False and TextDataModule.rebuilds_exactly is True
    assert keep_data(tmp_path / "text-tiny", TextDataModule()) is None
    assert not (tmp_path / "text-tiny").exists()
