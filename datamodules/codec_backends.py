"""The 24 kHz EnCodec network from either of its two implementations, behind one interface.

- ``transformers`` (default): ``transformers.EncodecModel``, installed with the suite's ``audio`` extra.
- ``encodec``: Meta's ``encodec`` package (code CC-BY-NC; it hard-requires torchaudio, so install it with
  ``pip install --no-deps encodec einops``), for users who want the reference implementation.

Both are the same network (SEANet encoder/decoder with a two-layer LSTM, 32 residual codebooks of 1024
entries) and, given the same weights, give the same codes for the same audio (tested where both are
installed). Two choices make a codec independent of the backend that built it:

- **One state format**: a codec's state dict is always the ``encodec`` package's (``encoder.model.0.conv.conv
  .weight_g``, ``quantizer.vq.layers.0._codebook.embed``, ...), the format of Meta's published checkpoint and
  of every ``codec.pt`` saved with the shards; ``transformers``' names are mapped on the way in and out.
- **One random initialisation**: the seeded random network is what the ``encodec`` package constructs under
  the seed, i.e. PyTorch's default initialisation of each convolution and LSTM in construction order
  (encoder, then decoder). ``transformers`` builds its encoder and decoder modules in that same order; its
  own ``_init_weights`` (kaiming normal) is not used. The codebooks start empty (``inited`` = 0) until the
  caller fills them (``codec.random_codec``: k-means).
"""

from __future__ import annotations

import importlib.machinery
import re
import sys
import types

import torch
from torch import nn

BACKENDS = ("transformers", "encodec")


def import_encodec():
    """The ``encodec`` package. It imports torchaudio only for file utilities the model never calls,
    and a torchaudio wheel often cannot load beside a CPU torch: the import is retried with a temporary
    stub that is removed right after, so no other library ever sees a fake torchaudio."""
    try:
        import encodec

        return encodec
    except (ImportError, OSError):  # torchaudio missing, or a CUDA torchaudio beside a CPU torch
        pass
    for k in [k for k in sys.modules if k.split(".")[0] in ("encodec", "torchaudio")]:
        del sys.modules[k]
    stub = types.ModuleType("torchaudio")
    stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
    sys.modules["torchaudio"] = stub
    try:
        import encodec
    except ImportError as e:
        raise ImportError(
            "data.codec_backend=encodec needs Meta's encodec package: pip install --no-deps encodec einops "
            "(or use data.codec_backend=transformers)"
        ) from e
    finally:
        del sys.modules["torchaudio"]
    return encodec


def _hf_names(model) -> dict[str, str]:
    """``transformers`` state-dict key -> the ``encodec`` package's key, from the modules' types."""
    from transformers.models.encodec.modeling_encodec import EncodecConvTranspose1d

    transposed = {name for name, m in model.named_modules() if isinstance(m, EncodecConvTranspose1d)}
    out = {}
    for key in model.state_dict():
        if key.startswith("quantizer."):  # quantizer.layers.i.codebook.x -> quantizer.vq.layers.i._codebook.x
            out[key] = re.sub(r"^quantizer\.layers\.(\d+)\.codebook\.", r"quantizer.vq.layers.\1._codebook.", key)
            continue
        owner, _, leaf = key.partition(".conv.")
        if leaf:  # a (transposed) convolution wrapped twice in encodec: SConv1d.conv (NormConv1d).conv
            kind = "convtr" if owner in transposed else "conv"
            leaf = leaf.replace("parametrizations.weight.original0", "weight_g")
            leaf = leaf.replace("parametrizations.weight.original1", "weight_v")
            key_out = f"{owner}.{kind}.{kind}.{leaf}"
        else:  # the LSTMs: same names below the block
            key_out = key
        out[key] = re.sub(r"^(encoder|decoder)\.layers\.", r"\1.model.", key_out)
    return out


class Codec(nn.Module):
    """One EnCodec network, whichever backend computes it. ``state_dict`` / ``load_state_dict`` speak
    the ``encodec`` package's names (module docstring)."""

    def __init__(self, net: nn.Module, backend: str):
        super().__init__()
        self.net, self.backend = net, backend
        self._names = _hf_names(net) if backend == "transformers" else None

    @property
    def encoder(self) -> nn.Module:  # audio (B, 1, L) -> frames (B, 128, F)
        return self.net.encoder

    @property
    def dimension(self) -> int:
        return 128

    @property
    def codebooks(self) -> list:
        """The residual codebooks in order, each with ``embed`` (1024, 128), ``inited``, ``encode``, ``decode``."""
        if self.backend == "transformers":
            return [layer.codebook for layer in self.net.quantizer.layers]
        return [layer._codebook for layer in self.net.quantizer.vq.layers]

    def encode(self, audio: torch.Tensor, n_q: int) -> torch.Tensor:
        """(B, 1, L) 24 kHz audio -> (B, n_q, F) codes: the residual quantiser on the encoder's frames."""
        residual = self.encoder(audio).transpose(1, 2)  # (B, F, 128)
        codes = []
        for cb in self.codebooks[:n_q]:
            idx = cb.encode(residual)  # (B, F)
            residual = residual - cb.decode(idx)
            codes.append(idx)
        return torch.stack(codes, 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, n_q, F) codes -> (B, 1, L) audio."""
        emb = sum(cb.decode(codes[:, k]) for k, cb in enumerate(self.codebooks[: codes.shape[1]]))  # (B, F, 128)
        return self.net.decoder(emb.transpose(1, 2))

    def state_dict(self, *args, **kwargs) -> dict:
        sd = self.net.state_dict()
        return {self._names[k]: v for k, v in sd.items()} if self._names else dict(sd)

    def load_state_dict(self, state: dict, strict: bool = True, assign: bool = False):
        if self._names:
            back = {v: k for k, v in self._names.items()}
            unknown = sorted(set(state) - set(back))
            if unknown and strict:
                raise KeyError(f"not an EnCodec 24 kHz state dict: unexpected keys {unknown[:3]}")
            state = {back[k]: v for k, v in state.items() if k in back}
        return self.net.load_state_dict(state, strict=strict, assign=assign)


def new(backend: str) -> Codec:
    """The 24 kHz network with the ``encodec`` package's seeded random weights (from the global RNG)
    and empty codebooks."""
    if backend == "encodec":
        return Codec(import_encodec().EncodecModel.encodec_model_24khz(pretrained=False), backend)
    if backend != "transformers":
        raise ValueError(f"data.codec_backend={backend!r} must be one of {BACKENDS}")
    try:
        from transformers import EncodecConfig, EncodecModel
        from transformers.models.encodec.modeling_encodec import EncodecDecoder, EncodecEncoder
    except ImportError as e:
        raise ImportError("EnCodec needs transformers: pip install -e '.[audio]'") from e
    cfg = EncodecConfig()  # the 24 kHz model's configuration
    encoder, decoder = EncodecEncoder(cfg), EncodecDecoder(cfg)  # default init, encodec's order
    with torch.random.fork_rng():  # transformers' own init must not consume the caller's seed
        net = EncodecModel(cfg)
    net.encoder, net.decoder = encoder, decoder
    with torch.no_grad():
        for layer in net.quantizer.layers:  # empty until filled, as encodec's k-means-init codebooks
            for buf in (layer.codebook.embed, layer.codebook.embed_avg, layer.codebook.cluster_size):
                buf.zero_()
            layer.codebook.inited.fill_(0.0)
    return Codec(net, backend)


def from_pretrained(name_or_dir: str) -> Codec:
    """A ``transformers`` EnCodec checkpoint (a Hub id such as ``facebook/encodec_24khz`` or a local
    directory); it must be the 24 kHz model."""
    from transformers import EncodecModel

    net = EncodecModel.from_pretrained(name_or_dir)
    if net.config.sampling_rate != 24000 or net.config.normalize:
        raise ValueError(
            f"data.codec_weights={name_or_dir!r} is not the 24 kHz EnCodec (sampling_rate "
            f"{net.config.sampling_rate}, normalize {net.config.normalize}); use facebook/encodec_24khz"
        )
    return Codec(net, "transformers")
