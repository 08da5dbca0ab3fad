"""DenseFormer: a depth-weighted average (DWA) after every block.

Pagliardini, Mohtashami, Fleuret, Jaggi. "DenseFormer: Enhancing Information Flow in Transformers
via Depth Weighted Averaging". NeurIPS 2024, https://arxiv.org/abs/2402.02622 ; reference code
github.com/epfml/DenseFormer (``denseformer/denseformer.py``, ``DWAModules``).

The blocks are ordinary pre-norm blocks; the stream they pass on is replaced by a learned average
of the raw block outputs (full residual states, before any averaging):

    X_0 = x0 ;  X_i = Block_i(Y_{i-1}) ;  Y_i = sum_{j in G(i)} alpha_{i,j} X_j        (Y_0 = X_0)

    G(i) = { j <= i : j = i (mod k) }      dilation k (k = 1: all earlier states)
    the average is taken after block i only when i = 0 (mod p)   period p; otherwise Y_i = X_i

Init alpha_{i,i} = 1, all others 0: exactly the vanilla decoder at step 0 (tested: equal logits).
Parameters: sum over averaged blocks of |G(i)| scalars (L(L+3)/2 for k = p = 1).

The reference keeps a pre-allocated (L+1, B, T, D) buffer with an in-place autograd op so that
no growing stack is copied; here each average is an explicit weighted sum over the stored states,
which torch.compile fuses into one kernel reading each state once (the same trick as VA).

Tested against the reference (``denseformer/denseformer.py``, ``DWAModules``, transcribed: the package
is not on PyPI): it holds ((i+1+k)//k) weights for block index i (0-based), over the stored outputs
whose index is congruent to i+1 mod k, applies them when (i+1) mod p = 0, and initialises the last
weight to 1 and the others to 0 -- the groups, period and init above; logits and gradients agree in
float64 for several dilations and periods (``tests/arch/test_denseformer.py``).

Reader hooks: ``update`` (after the MLP: store X_i, return Y_i).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lit_vattn.arch.base import Arch, DepthMap, DepthMemory
from lit_vattn.arch.registry import register
from lit_vattn.model.config import GPTConfig


@register(
    title="DenseFormer",
    paper="[Pagliardini et al., NeurIPS 2024](https://arxiv.org/abs/2402.02622)",
    reads="a learned weighted average of all earlier block outputs after each block",
    exact_at_init=True,
)
class DenseFormer(Arch):
    name = "denseformer"

    def __init__(self, dilation: int = 1, period: int = 1):
        """
        Args:
            dilation: k: the average after block i reads only the states X_j with j = i (mod k).
            period: p: average only after every p-th block (blocks p, 2p, ...).
        """
        super().__init__()
        self.dilation, self.period = dilation, period

    def validate(self, cfg: GPTConfig) -> None:
        if self.dilation < 1 or self.period < 1:
            raise ValueError(f"DenseFormer.dilation={self.dilation} and period={self.period} must be >= 1")

    def group(self, i: int) -> list[int]:
        """States averaged after block i (1-based: X_i is block i's output), oldest first."""
        return list(range(i % self.dilation, i + 1, self.dilation))

    def bind(self, cfg: GPTConfig) -> "DenseFormer":
        super().bind(cfg)
        self.averaged = [i for i in range(1, cfg.n_layer + 1) if i % self.period == 0]
        self.alphas = nn.ParameterDict({str(i): nn.Parameter(torch.zeros(len(self.group(i)))) for i in self.averaged})
        for p in self.alphas.values():
            p.depth_mix = True
        self.reset_parameters()
        return self

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for p in self.alphas.values():
            p.zero_()
            p[-1] = 1.0  # the block's own output: vanilla at init

    def update(self, l: int, s: str, stream: Tensor, out: Tensor, mem: DepthMemory) -> Tensor:
        x = super().update(l, s, stream, out, mem)  # attn: Y + a ; mlp: X_{l+1} = Y + a + m
        if s == "attn":
            return x
        states = self.slot(mem).setdefault("X", [mem.x0] if l == 0 else None)
        states.append(x)  # X_{l+1}, (B, T, D)
        i = l + 1
        if str(i) not in self.alphas:
            return x
        alpha = self.alphas[str(i)].to(x.dtype)
        src = self.group(i)
        y = alpha[0] * states[src[0]]
        for w, j in zip(alpha[1:], src[1:]):
            y = y + w * states[j]
        return y  # Y_i, (B, T, D)

    @torch.no_grad()
    def depth_map(self) -> dict[str, DepthMap]:
        """'weights': (L, L + 1), row i = the weights of the average after block i over X_0..X_L
        (zero where a state is outside the dilation group; a row of 1 on the diagonal where no
        average is taken)."""
        L = self.cfg.n_layer
        m = torch.zeros(L, L + 1)
        for i in range(1, L + 1):
            if str(i) in self.alphas:
                m[i - 1, self.group(i)] = self.alphas[str(i)].float().cpu()
            else:
                m[i - 1, i] = 1.0
        return {
            "weights": DepthMap(
                m,
                [f"after block {i - 1}" for i in range(1, L + 1)],
                ["x0"] + [f"X{j}" for j in range(1, L + 1)],
                "DWA weight",
            )
        }
