"""EnCodec through ``transformers`` is the network Meta's ``encodec`` package builds: same seeded weights,
same saved state, same codes and audio; and MIDI renders through symusic deterministically."""

import importlib.util

import numpy as np
import pytest
import torch

from datamodules import codec

HAS_ENCODEC = importlib.util.find_spec("encodec") is not None
needs_encodec = pytest.mark.skipif(not HAS_ENCODEC, reason="Meta's encodec package is not installed (optional backend)")

# codec.checksum of encodec 0.1.1's `EncodecModel.encodec_model_24khz()` built after torch.manual_seed(0):
# recorded from the package so that installs without it still check the transformers backend against it
ENCODEC_SEED0_CHECKSUM = "9987166977b455b8"


def audio(seconds: float, seed: int = 0) -> np.ndarray:
    """A gliding tone in noise at 24 kHz: enough structure for k-means to find distinct codes."""
    t = np.arange(int(seconds * codec.SAMPLE_RATE)) / codec.SAMPLE_RATE
    tone = 0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.1 * np.sin(t)))
    return (tone + 0.05 * np.random.default_rng(seed).standard_normal(len(t))).astype(np.float32)


def test_the_seeded_random_network_is_encodecs():
    torch.manual_seed(0)
    assert codec.checksum(codec.build("random", 6.0)) == ENCODEC_SEED0_CHECKSUM


def test_state_dicts_use_encodecs_names_both_ways():
    model = codec.build("random", 6.0)
    state = model.state_dict()
    assert "encoder.model.0.conv.conv.weight_g" in state
    assert "decoder.model.3.convtr.convtr.weight_v" in state  # the first transposed convolution
    assert "encoder.model.13.lstm.weight_ih_l0" in state and "quantizer.vq.layers.31._codebook.embed" in state
    assert len(state) == 252
    other = codec.build("random", 6.0)
    other.load_state_dict(state)
    assert codec.checksum(other) == codec.checksum(model)
    with pytest.raises(KeyError, match="not an EnCodec"):
        other.load_state_dict({**state, "encoder.extra": torch.zeros(1)})


def test_an_unfilled_random_codec_is_refused():
    with pytest.raises(ValueError, match="never initialised"):
        codec.check_initialised(codec.build("random", 3.0), 3.0)


def test_a_saved_codec_loads_back_and_encodes_the_same(tmp_path):
    model = codec.random_codec(audio(16), 3.0, seed=1, iters=2)
    codec.save(model, tmp_path / "codec.pt")
    again = codec.load(tmp_path / "codec.pt", 3.0)
    clips = [audio(2.5, seed=3)]
    a, b = (codec.encode(m, clips, torch.device("cpu"), 3.0)[0] for m in (model, again))
    assert a.shape == (4, 188) and np.array_equal(a, b)
    assert len(np.unique(a[0])) > 20


def test_a_transformers_directory_is_a_codec(tmp_path):
    model = codec.random_codec(audio(16), 3.0, seed=1, iters=2)
    model.net.save_pretrained(tmp_path / "encodec")
    again = codec.build(str(tmp_path / "encodec"), 3.0)
    assert codec.checksum(again) == codec.checksum(model)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="codec_backend='nope'"):
        codec.build("random", 6.0, "nope")


@needs_encodec
def test_both_backends_build_fill_encode_and_decode_alike():
    out = {}
    for backend in codec.BACKENDS:
        model = codec.random_codec(audio(16), 6.0, seed=5, iters=3, backend=backend)
        codes = codec.encode(model, [audio(3, seed=1), audio(1.7, seed=2)], torch.device("cpu"), 6.0)
        out[backend] = codec.checksum(model), codes, codec.decode(model, codes[0])
    (sum_t, codes_t, wav_t), (sum_e, codes_e, wav_e) = out["transformers"], out["encodec"]
    assert sum_t == sum_e
    assert all(np.array_equal(x, y) for x, y in zip(codes_t, codes_e))
    np.testing.assert_array_equal(wav_t, wav_e)


@needs_encodec
def test_encodec_imports_without_leaving_a_fake_torchaudio():
    import sys

    from datamodules.codec_backends import import_encodec

    assert hasattr(import_encodec(), "EncodecModel")
    if importlib.util.find_spec("torchaudio") is None:  # the CPU install: no stub left behind
        assert "torchaudio" not in sys.modules


@needs_encodec
def test_the_recorded_checksum_is_the_encodec_packages():
    torch.manual_seed(0)
    assert codec.checksum(codec.build("random", 6.0, "encodec")) == ENCODEC_SEED0_CHECKSUM


def test_midi_renders_deterministically_through_symusic():
    pytest.importorskip("symusic")
    pytest.importorskip("pretty_midi")
    from datamodules.audio_sources import rendered_music_clips

    first = list(rendered_music_clips(seconds=40.0))
    second = list(rendered_music_clips(seconds=40.0))
    assert [k for k, _, _ in first] == [k for k, _, _ in second] and len(first) >= 2
    for (_, name, a), (_, _, b) in zip(first, second):
        assert a.dtype == np.float32 and a.ndim == 1 and np.array_equal(a, b), name
        assert 0.01 < np.abs(a).max() <= 1.0  # sound, not silence or clipping
    assert sum(len(a) for _, _, a in first) / codec.SAMPLE_RATE >= 40.0
