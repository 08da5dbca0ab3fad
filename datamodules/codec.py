"""EnCodec 24 kHz as a tokenizer: pretrained where its weights are present, otherwise the same
architecture with seeded random weights and k-means-initialised codebooks.

Défossez et al., "High Fidelity Neural Audio Compression", arXiv:2210.13438. The network comes from
``transformers`` (default) or Meta's ``encodec`` package (``data.codec_backend``): same weights, same
codes (``codec_backends``). Traps we measured (docs/data.md, acoustic tokens):
- An untrained EnCodec returns code 0 everywhere: its codebooks are empty until filled.
  ``random_codec`` initialises them by k-means on real audio, level by level on the residuals;
  ``check_initialised`` refuses a codec whose codebooks were never set.
- With random weights RVQ levels past 8 collapse: keep bandwidth <= 6 kbps (8 codebooks).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from datamodules import codec_backends
from datamodules.codec_backends import BACKENDS, Codec
from lit_vattn.io import atomic_path

SAMPLE_RATE = 24000
FRAME_RATE = 75
BINS = 1024
PRETRAINED_FILE = "encodec_24khz-d7cc33bc.th"
N_Q = {1.5: 2, 3.0: 4, 6.0: 8, 12.0: 16, 24.0: 32}
MIN_KMEANS_SECONDS = BINS / FRAME_RATE  # one frame per codebook entry: 13.7 s

__all__ = ["BACKENDS", "Codec", "build", "random_codec", "encode", "decode", "load", "save", "checksum"]


def pretrained_path(path: Optional[str] = None) -> Optional[Path]:
    """The pretrained 24 kHz checkpoint: a given path, or torch hub's cache; None if absent."""
    if path:
        return Path(path) if Path(path).is_file() else None
    p = Path(torch.hub.get_dir()) / "checkpoints" / PRETRAINED_FILE
    return p if p.is_file() else None


def build(weights: str, bandwidth: float, backend: str = "transformers") -> Codec:
    """weights: "pretrained" (Meta's checkpoint in torch hub's cache), a checkpoint path (the
    ``encodec`` package's format, as ``codec.pt``), a ``transformers`` model (Hub id or directory,
    backend transformers), or "random" (seeded from the global RNG; the caller fills the codebooks)."""
    if bandwidth not in N_Q:
        raise ValueError(f"data.bandwidth={bandwidth} must be one of {sorted(N_Q)} kbps")
    if backend not in BACKENDS:
        raise ValueError(f"data.codec_backend={backend!r} must be one of {BACKENDS}")
    if weights == "random":
        return codec_backends.new(backend).eval()
    p = pretrained_path(None if weights == "pretrained" else weights)
    if (
        p is None
        and weights != "pretrained"
        and backend == "transformers"
        and ("/" in weights or Path(weights).is_dir())
    ):
        return codec_backends.from_pretrained(weights).eval()
    if p is None:
        raise FileNotFoundError(
            f"EnCodec weights not found ({weights!r}; looked for {PRETRAINED_FILE} in {torch.hub.get_dir()}/checkpoints). "
            "Download them once with network access, give a checkpoint path or a transformers model "
            "(data.codec_weights=facebook/encodec_24khz), or use data.codec_weights=random"
        )
    model = codec_backends.new(backend)
    model.load_state_dict(torch.load(p, map_location="cpu"))
    return model.eval()


@torch.no_grad()
def _kmeans(x: torch.Tensor, k: int, iters: int, g: torch.Generator) -> torch.Tensor:
    c = x[torch.randperm(x.shape[0], generator=g)[:k]].clone()
    for _ in range(iters):
        a = (x.pow(2).sum(1, keepdim=True) - 2 * x @ c.T + c.pow(2).sum(1)).argmin(1)
        s = torch.zeros_like(c).index_add_(0, a, x)
        n = torch.bincount(a, minlength=k).float()
        alive = n > 0
        c[alive] = s[alive] / n[alive, None]
        dead = (~alive).nonzero().flatten()
        if len(dead):  # re-seed empty clusters with random frames
            c[dead] = x[torch.randint(x.shape[0], (len(dead),), generator=g)]
    return c


@torch.no_grad()
def random_codec(audio: np.ndarray, bandwidth: float, seed: int = 0, iters: int = 10, backend: str = "transformers"):
    """Seeded random EnCodec whose codebooks are k-means of its encoder's frames on ``audio``
    (1-D float32 at 24 kHz; needs >= 1024 frames, i.e. 13.7 s). The same for either backend."""
    if len(audio) < MIN_KMEANS_SECONDS * SAMPLE_RATE:
        raise ValueError(
            f"k-means needs at least {MIN_KMEANS_SECONDS:.1f} s of training audio, got {len(audio) / SAMPLE_RATE:.1f} s"
        )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build("random", bandwidth, backend)
    g = torch.Generator().manual_seed(seed)
    seg = 10 * SAMPLE_RATE  # encode in 10 s pieces; the last one is padded and its padding frames dropped
    n_seg = -(-len(audio) // seg)
    x = torch.zeros(n_seg * seg)
    x[: len(audio)] = torch.from_numpy(np.asarray(audio, dtype=np.float32))
    r = model.encoder(x.view(n_seg, 1, seg)).transpose(1, 2).reshape(-1, model.dimension)  # (frames, 128)
    r = r[: -(-len(audio) * FRAME_RATE // SAMPLE_RATE)]
    for cb in model.codebooks[: N_Q[bandwidth]]:
        c = _kmeans(r, cb.codebook_size, iters, g)
        cb.embed.copy_(c)
        cb.embed_avg.copy_(c)
        cb.cluster_size.fill_(1.0)
        cb.inited.fill_(1.0)
        r = r - cb.decode(cb.encode(r))
    return model


def check_initialised(model, bandwidth: float) -> None:
    for i, cb in enumerate(model.codebooks[: N_Q[bandwidth]]):
        if float(cb.inited) == 0:
            raise ValueError(
                f"EnCodec codebook {i} was never initialised (it would return code 0 everywhere): "
                "use pretrained weights or data.codec_weights=random, which initialises it by k-means"
            )


def check_diversity(codes: np.ndarray, what: str = "the training audio") -> None:
    """codes: (n_q, frames). One code for all frames at a level means that level carries nothing:
    an uninitialised codebook (all zeros) or one collapsed for lack of k-means data."""
    for k, level in enumerate(codes):
        if len(np.unique(level)) < 2:
            raise ValueError(
                f"EnCodec returned a single code at level {k} for all of {what}: the codebook is not initialised "
                "or collapsed. Use pretrained weights, more k-means audio (data.kmeans_seconds) or a lower data.bandwidth"
            )


def checksum(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def encode(
    model: Codec, clips: list[np.ndarray], device: torch.device, bandwidth: float, batch_seconds: float = 120.0
) -> list[np.ndarray]:
    """Codes (n_q, frames) for each 24 kHz mono clip, batched by similar length. Right padding
    is safe: the 24 kHz EnCodec is causal (convolutions and LSTM), so frames inside a clip never
    see the padding."""
    model = model.to(device)
    from datamodules.shards import progress

    order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
    out: list[Optional[np.ndarray]] = [None] * len(clips)
    i = 0
    bar = progress(sum(len(c) for c in clips) / SAMPLE_RATE, f"EnCodec encoding ({device.type}), audio seconds")
    while i < len(order):
        longest = len(clips[order[min(len(order) - 1, i)]])
        n = max(1, int(batch_seconds * SAMPLE_RATE // max(longest, 1)))
        idx = order[i : i + n]
        L = max(len(clips[j]) for j in idx)
        x = torch.zeros(len(idx), 1, L)
        for b, j in enumerate(idx):
            x[b, 0, : len(clips[j])] = torch.from_numpy(clips[j])
        codes = model.encode(x.to(device), N_Q[bandwidth]).cpu().numpy()  # (B, n_q, F)
        for b, j in enumerate(idx):
            frames = -(-len(clips[j]) * FRAME_RATE // SAMPLE_RATE)
            out[j] = codes[b, :, :frames]
        i += len(idx)
        bar.update(sum(len(clips[j]) for j in idx) / SAMPLE_RATE)
    bar.close()
    return out  # type: ignore[return-value]


def flatten(codes: np.ndarray) -> np.ndarray:
    """(n_q, frames) codes -> one stream, frame by frame: codebook k of frame f at f * n_q + k,
    with id k * 1024 + code (each codebook its own id range)."""
    n_q = codes.shape[0]
    return (np.asarray(codes, dtype=np.int64) + (np.arange(n_q) * BINS)[:, None]).T.reshape(-1)


def unflatten(tokens: np.ndarray, n_q: int) -> np.ndarray:
    """Inverse of ``flatten``; a trailing partial frame is dropped."""
    t = np.asarray(tokens, dtype=np.int64)
    t = t[: len(t) // n_q * n_q].reshape(-1, n_q)  # (frames, n_q)
    k = np.arange(n_q) * BINS
    if not np.all((t >= k) & (t < k + BINS)):
        raise ValueError("token ids are not frame-aligned codes (position f * n_q + k must hold codebook k)")
    return (t - k).T


@torch.no_grad()
def decode(model: Codec, codes: np.ndarray) -> np.ndarray:
    """(n_q, frames) codes -> 1-D float32 waveform at 24 kHz."""
    c = torch.from_numpy(np.asarray(codes, dtype=np.int64))[None]  # (1, n_q, F)
    return model.decode(c)[0, 0].cpu().numpy()


def save(model: Codec, path: Path) -> None:
    """The state in the ``encodec`` package's format, whichever backend built it."""
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)


def load(path: Path, bandwidth: float, backend: str = "transformers") -> Codec:
    model = build("random", bandwidth, backend)
    model.load_state_dict(torch.load(path, map_location="cpu"))
    return model.eval()
