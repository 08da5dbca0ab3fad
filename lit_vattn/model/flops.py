"""Training FLOPs per token, measured by ``torch.utils.flop_counter.FlopCounterMode``.

One forward + backward of a twin of the model built on the meta device (no memory, no arithmetic:
only the operators are dispatched and counted), at batch 1 and the given context length. Attention
runs through SDPA's math kernel while counting, so every architecture's attention is counted as
the dense matmuls QK^T and PV over all the keys it is given (the PaLM convention for causal
attention: 12 L D T per token for a vanilla decoder); FlashAttention's and FlexAttention's own
counts are the same by construction, the math kernel only makes the count independent of the
backend and device. Counted are matrix products and attention (what MFU is about); norms,
activations and the optimizer are not.
"""

from __future__ import annotations

import json
from dataclasses import replace

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def _key(net, T: int) -> str:
    arch = net.arch
    return json.dumps(
        {
            "cfg": vars(net.cfg),
            "vocab": net.vocab_size,
            "arch": type(arch).__module__ + "." + type(arch).__qualname__,
            "switches": arch.switches(),
            "T": T,
        },
        sort_keys=True,
        default=str,
    )


_CACHE: dict[str, float] = {}


def flops_per_token(net, T: int) -> float:
    """Measured training FLOPs (forward + backward) per token of ``net`` (a ``lit_vattn.GPT``) at
    context length T; cached per (shape, architecture, switches, T)."""
    key = _key(net, T)
    if key not in _CACHE:
        cfg = replace(net.cfg, attn_backend="sdpa")  # one dense count, whatever backend trains
        with torch.device("meta"):
            twin = type(net)(cfg, net.vocab_size, net.arch.spawn())
        idx = torch.zeros(1, T, dtype=torch.long, device="meta")
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            twin(idx).float().sum().backward()
        _CACHE[key] = counter.get_total_flops() / T
    return _CACHE[key]
