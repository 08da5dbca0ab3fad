"""Sampling (the KV cache equals the full forward for every method: test_method_contract.py): the samplers' filters, seeded
samples, and ``lit-vattn-generate`` writing files that decode, for every modality."""

import json

import numpy as np
import pytest
import torch
from helpers import CFG, declared_settings

from lit_vattn import GPT, GPTConfig
from lit_vattn.arch import ValueResidual, VerticalAttention
from lit_vattn.arch.base import Composed
from lit_vattn.arch.registry import registry
from lit_vattn.model.memory import KVCache
from lit_vattn.tools.generate import filter_logits, sample

V = 61
READERS = {
    **registry(),
    **declared_settings(),
    "va+value-residual": lambda: Composed([VerticalAttention(), ValueResidual()]),
}


def trained_like(make, seed=0, **cfg):
    """A model whose every parameter is moved off its init, so zero-init branches (DenseFormer,
    MUDD, LAuReL, ...) take part in what the cache must reproduce."""
    torch.manual_seed(seed)
    net = GPT(GPTConfig(**{**CFG, **cfg}), V, make())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def test_decode_past_the_context_is_refused():
    net = trained_like(READERS["vanilla"], max_seq_len=8)
    cache = KVCache()
    net.decode(torch.zeros(1, 8, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="exceeds GPTConfig.max_seq_len=8"):
        net.decode(torch.zeros(1, 1, dtype=torch.long), cache)


def test_filters_keep_what_they_promise():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.8)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.1)).tolist() == [[True, False, False, False]]
    p = filter_logits(logits, temperature=2.0).softmax(-1)
    torch.testing.assert_close(
        p, torch.tensor([[0.5, 0.3, 0.15, 0.05]]).sqrt() / torch.tensor([0.5, 0.3, 0.15, 0.05]).sqrt().sum()
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vanilla", "las", "sla-concat", "value-residual", "hc"])
def test_cached_and_recomputed_sampling_draw_the_same_tokens_past_the_context(name):
    net = trained_like(READERS[name], max_seq_len=16)
    kw = dict(n=3, max_new_tokens=40, temperature=0.9, top_k=20, seed=5)  # 41 > 16: the context restarts twice
    a = sample(net, [3, 4, 5], use_cache=True, **kw)
    b = sample(net, [3, 4, 5], use_cache=False, **kw)
    assert a == b and all(len(s) == 40 for s in a)
    assert sample(net, [3, 4, 5], **kw) == a  # same seed, same samples
    assert sample(net, [3, 4, 5], **{**kw, "seed": 6}) != a


def test_a_batch_of_prompts_gives_each_prompts_own_greedy_continuation():
    net = trained_like(READERS["va"], max_seq_len=16)
    prompts = [[3, 4, 5], [9, 8, 7]]
    together = sample(net, prompts, max_new_tokens=20, greedy=True)
    assert together == [sample(net, p, n=1, max_new_tokens=20, greedy=True)[0] for p in prompts]
    with pytest.raises(ValueError, match="prompts of one length"):
        sample(net, [[1, 2], [3]], greedy=True)


def test_a_sample_ends_at_the_stop_token_and_respects_the_mask():
    net = trained_like(READERS["vanilla"])
    allowed = torch.zeros(V, dtype=torch.bool)
    allowed[[7, 9]] = True
    out = sample(net, [1], n=8, max_new_tokens=30, stop_id=9, allowed=lambda i: allowed, seed=0, top_k=1, top_p=0.5)
    out += sample(net, [1], n=8, max_new_tokens=30, stop_id=9, allowed=lambda i: allowed, seed=0)
    for s in out:
        assert set(s) <= {7, 9}
        assert 9 not in s[:-1] and (s[-1] == 9 or len(s) == 30)
    assert any(s[-1] == 9 and len(s) < 30 for s in out)


# --- lit-vattn-generate on a checkpoint of each modality --------------------------------------------

from pathlib import Path  # noqa: E402

from helpers import tiny_run  # noqa: E402

from lit_vattn.tools.generate import main as generate  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def run(ckpt, out, *args) -> dict:
    generate(["--ckpt_path", str(ckpt), "--out", str(out), "--n", "2", *args])
    return json.loads((Path(out) / "samples.json").read_text())


@pytest.mark.slow
def test_text_samples_continue_the_prompt_and_repeat_with_the_seed(tmp_path, monkeypatch):
    ckpt = tiny_run("text", tmp_path, monkeypatch)
    a = run(ckpt, tmp_path / "a", "--prompt", "In the beginning", "--max_new_tokens", "12", "--top_k", "50")
    texts = [(tmp_path / "a" / f"sample{i}.txt").read_text() for i in range(2)]
    assert all(t.startswith("In the beginning") and len(t) > len("In the beginning") for t in texts)
    assert a["prompt_tokens"] >= 2 and all(1 <= n <= 12 for n in a["new_tokens"])
    b = run(
        ckpt, tmp_path / "b", "--prompt", "In the beginning", "--max_new_tokens", "12", "--top_k", "50", "--no_cache"
    )
    assert b["samples"] == a["samples"]  # the cache changes nothing; the same seed gives the same samples
    c = run(ckpt, tmp_path / "c", "--max_new_tokens", "12", "--seed", "1")  # unconditional
    assert c["prompt_tokens"] == 1 and c["samples"] != a["samples"]
    with pytest.raises(SystemExit, match="cannot encode the prompt from '<|endoftext|>"):
        run(ckpt, tmp_path / "d", "--prompt", "Amen.<|endoftext|>")
    with pytest.raises(SystemExit, match="longer than the model's context of 64"):
        run(ckpt, tmp_path / "d", "--prompt", "and it was so. " * 40)
    with pytest.raises(SystemExit, match="--top_p 0.0: must be in"):
        run(ckpt, tmp_path / "d", "--top_p", "0")


@pytest.mark.slow
def test_music_samples_are_midi_files_with_a_piano_roll(tmp_path, monkeypatch):
    import music21
    import symusic

    ckpt = tiny_run("music", tmp_path, monkeypatch)
    mid = Path(music21.__file__).parent / "midi/testPrimitive/test05.mid"
    a = run(ckpt, tmp_path / "a", "--prompt", str(mid), "--prompt_bars", "1", "--max_new_tokens", "20")
    for i in range(2):
        score = symusic.Score(str(tmp_path / "a" / f"sample{i}.mid"))  # a valid MIDI file that decodes
        assert sum(len(t.notes) for t in score.tracks) > 0
        assert (tmp_path / "a" / f"sample{i}.png").read_bytes()[:8] == PNG
    b = run(ckpt, tmp_path / "b", "--prompt", str(mid), "--prompt_bars", "1", "--max_new_tokens", "20")
    assert (tmp_path / "b/sample0.mid").read_bytes() == (tmp_path / "a/sample0.mid").read_bytes()
    assert b["samples"] == a["samples"]
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"MThd not really a midi file")
    with pytest.raises(SystemExit, match="bad.mid: not a readable MIDI file"):
        run(ckpt, tmp_path / "c", "--prompt", str(bad))


@pytest.mark.slow
def test_acoustic_samples_decode_to_24khz_wav_with_a_spectrogram(tmp_path, monkeypatch):
    import soundfile as sf

    ckpt = tiny_run("acoustic", tmp_path, monkeypatch)
    t = np.arange(16000) / 16000
    sf.write(tmp_path / "tone16k.wav", 0.3 * np.sin(2 * np.pi * 220 * t), 16000)
    with pytest.raises(
        SystemExit, match="tone16k.wav is sampled at 16000 Hz but the run's codec takes 24000 Hz: pass --resample"
    ):
        run(ckpt, tmp_path / "a", "--prompt", str(tmp_path / "tone16k.wav"))
    a = run(ckpt, tmp_path / "a", "--prompt", str(tmp_path / "tone16k.wav"), "--resample", "--max_new_tokens", "40")
    n_q = 4  # bandwidth 3 kbps
    assert a["prompt_tokens"] == 1 + 64 // 2 // n_q * n_q  # half the context, in whole frames
    for i, s in enumerate(a["samples"]):
        assert all(tok // 1024 == (a["prompt_tokens"] - 1 + j) % n_q for j, tok in enumerate(s) if tok != n_q * 1024)
        wav, sr = sf.read(tmp_path / "a" / f"sample{i}.wav")
        frames = (a["prompt_tokens"] - 1 + len([x for x in s if x != n_q * 1024])) // n_q
        assert sr == 24000 and len(wav) == frames * 320 and np.isfinite(wav).all()
        assert (tmp_path / "a" / f"sample{i}.png").read_bytes()[:8] == PNG
    b = run(
        ckpt,
        tmp_path / "b",
        "--prompt",
        str(tmp_path / "tone16k.wav"),
        "--resample",
        "--max_new_tokens",
        "40",
        "--no_cache",
    )
    assert b["samples"] == a["samples"]
