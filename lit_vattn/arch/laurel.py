"""LAuReL: learned augmented residual connections.

Menghani, Kumar, Kumar. "LAuReL: Learned Augmented Residual Layer". ICML 2025,
https://arxiv.org/abs/2411.07501 (PMLR 267).

LAuReL generalises every residual connection x_{i+1} = f(x_i) + x_i to

    x_{i+1} = alpha_i * f(x_i) + g_i(x_i, x_{i-1}, ..., x_0)

with three forms of g that combine (here: switches that stack, as the paper's RW+LR and
RW+LR+PA combinations):

    RW  (residual weights)       g = beta_i * x_i                   alpha_i, beta_i learned scalars
    LR  (low rank)               g = beta_i * (x_i + B_i A_i x_i)   A_i: D -> r, B_i: r -> D
    PA  (previous activations)   g += sum_{j=1..k} gamma_{i,j} * x_{i-j}   the k residual inputs
                                                                     before x_i, learned scalars

Here a "layer" i is one sub-layer (attention or MLP) of the pre-norm decoder and x_i its residual
input, so every residual connection of the model is augmented. Init: alpha = beta = 1, B = 0,
gamma = 0, A ~ N(0, 1/D): exactly the vanilla decoder at step 0 (tested: equal logits).

``form: gemma3n`` is the production form of Gemma 3n (``transformers``' ``Gemma3nTextLaurelBlock`` and
its decoder layer, which ``tests/arch/test_laurel.py`` holds ours equal to): once per block, on the
attention's normalised input x^ = norm1(x), and merged with the attention's residual:

    x_attn = (x + a + x^ + RMSNorm_g(B A x^)) / sqrt(2)        A: D -> r, B: r -> D, gain g
    x_mlp  = x_attn + m                                          (the MLP's residual unchanged)

Init (``transformers``' random init): A, B ~ N(0, 0.02^2), g = 1; not vanilla at init (x^ is added).

Departure, stated because the paper's method section could not be read offline (only its
abstract and third-party summaries of its equations): the RW scalars are used raw rather than
through a normalisation, and PA mixes the earlier residual inputs with scalars (no per-source
low-rank map). Both are switches away from the other readings if the paper settles them
(see results/README.md).

Reader hooks: ``update`` (both sub-layers).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_vattn.arch.base import Arch, DepthMap, DepthMemory
from lit_vattn.arch.registry import register
from lit_vattn.model.config import GPTConfig


@register(
    title="LAuReL",
    paper="[Menghani et al., ICML 2025](https://arxiv.org/abs/2411.07501)",
    reads="a learned (weighted, low-rank, earlier-activation) residual",
    exact_at_init=True,
    controls=("laurel-gemma3n",),
)
class LAuReL(Arch):
    name = "laurel"

    def __init__(
        self, weights: bool = True, rank: int = 16, previous: int = 0, form: Literal["paper", "gemma3n"] = "paper"
    ):
        """
        Args:
            weights: RW: learned scalars alpha (on the sub-layer output) and beta (on the skip path).
            rank: LR: rank r of the learned map added to the skip path; 0 turns LR off.
            previous: PA: number k of earlier residual inputs added with learned scalars; 0 = off.
            form: "paper": every residual connection augmented as above; "gemma3n": Gemma 3n's
                production form (LR only, once per block on the normalised input, RMSNorm'd, merged
                with the attention residual and scaled by 1/sqrt(2)); needs weights=false, previous=0.
        """
        super().__init__()
        self.weights, self.rank, self.previous, self.form = weights, rank, previous, form

    def validate(self, cfg: GPTConfig) -> None:
        if self.form not in ("paper", "gemma3n"):
            raise ValueError(f"LAuReL.form={self.form!r}: choose 'paper' or 'gemma3n'")
        if self.form == "gemma3n" and (self.weights or self.previous or not self.rank):
            raise ValueError(
                "LAuReL form=gemma3n is the low-rank path alone: set weights: false, previous: 0 and rank >= 1 "
                f"(got weights={self.weights}, previous={self.previous}, rank={self.rank})"
            )
        if self.rank < 0 or self.rank > cfg.d_model or self.previous < 0:
            raise ValueError(
                f"LAuReL.rank={self.rank} must lie in [0, d_model={cfg.d_model}] and "
                f"previous={self.previous} must be >= 0"
            )
        if not (self.weights or self.rank or self.previous):
            raise ValueError(
                "LAuReL with weights=false, rank=0 and previous=0 is the vanilla decoder: "
                "turn one on, or use configs/arch/vanilla.yaml"
            )

    def bind(self, cfg: GPTConfig) -> "LAuReL":
        super().bind(cfg)
        n, D = 2 * cfg.n_layer, cfg.d_model  # one augmented residual per sub-layer
        if self.form == "gemma3n":
            n = cfg.n_layer  # one per block
            self.gain = nn.Parameter(torch.ones(n, D))  # the post-LAuReL RMSNorm's gain
            self.gain.depth_mix = True
        if self.weights:
            self.alpha = nn.Parameter(torch.ones(n))
            self.beta = nn.Parameter(torch.ones(n))
            self.alpha.depth_mix = self.beta.depth_mix = True
        if self.rank:
            self.A = nn.Parameter(torch.empty(n, self.rank, D))  # (n, r, D): D -> r
            self.B = nn.Parameter(torch.zeros(n, D, self.rank))  # (n, D, r): r -> D
            self.A.depth_mix = self.B.depth_mix = True
        if self.previous:
            self.gamma = nn.Parameter(torch.zeros(n, self.previous))
            self.gamma.depth_mix = True
        self.reset_parameters()
        return self

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.weights:
            self.alpha.fill_(1.0)
            self.beta.fill_(1.0)
        if self.rank and self.form == "gemma3n":
            nn.init.normal_(self.A, 0.0, 0.02)
            nn.init.normal_(self.B, 0.0, 0.02)
            self.gain.fill_(1.0)
        elif self.rank:
            nn.init.normal_(self.A, 0.0, 1.0 / math.sqrt(self.cfg.d_model))
            self.B.zero_()  # the low-rank path starts at zero
        if self.previous:
            self.gamma.zero_()

    def update(self, l: int, s: str, stream: Tensor, out: Tensor, mem: DepthMemory) -> Tensor:
        if self.form == "gemma3n":
            return self._gemma3n(l, s, stream, out, mem)
        i = 2 * l + (s == "mlp")  # sub-layer index
        x = mem.inputs[l][s]  # (B, T, D): the residual input x_i
        skip = x
        if self.rank:
            skip = skip + (x @ self.A[i].t().to(x.dtype)) @ self.B[i].t().to(x.dtype)  # x + B A x
        if self.weights:
            out = self.alpha[i].to(out.dtype) * out
            skip = self.beta[i].to(x.dtype) * skip
        y = skip + out
        if self.previous:
            earlier = [mem.inputs[j // 2][SUB[j % 2]] for j in range(max(i - self.previous, 0), i)][::-1]
            for g, xj in zip(self.gamma[i], earlier):  # x_{i-1}, x_{i-2}, ...
                y = y + g.to(xj.dtype) * xj
        return y  # (B, T, D)

    def _gemma3n(self, l: int, s: str, stream: Tensor, out: Tensor, mem: DepthMemory) -> Tensor:
        if s == "mlp":
            return stream + out  # (B, T, D)
        xn = mem.normed[l]["attn"]  # (B, T, D): x^, the attention's normalised input
        lr = (xn @ self.A[l].t().to(xn.dtype)) @ self.B[l].t().to(xn.dtype)  # (B, T, D): B A x^
        lr = F.rms_norm(lr.float(), (lr.shape[-1],), self.gain[l].float(), self.cfg.norm_eps).to(xn.dtype)
        return (stream + out + xn + lr) * (0.5**0.5)  # (B, T, D)

    @torch.no_grad()
    def depth_map(self) -> dict[str, DepthMap]:
        """'scalars': per sub-layer (gemma3n: per block) alpha, beta, ||B A|| (Frobenius) and the gammas."""
        per_block = self.form == "gemma3n"
        n = self.cfg.n_layer if per_block else 2 * self.cfg.n_layer
        cols, vals = [], []
        if self.weights:
            cols += ["alpha", "beta"]
            vals += [self.alpha.float(), self.beta.float()]
        if self.rank:
            cols.append("|BA|_F")
            vals.append(torch.stack([(self.B[i].float() @ self.A[i].float()).norm() for i in range(n)]))
        if self.previous:
            cols += [f"gamma x_(i-{j})" for j in range(1, self.previous + 1)]
            vals += list(self.gamma.float().t())
        rows = [f"block {i}" if per_block else f"block {i // 2} {SUB[i % 2]}" for i in range(n)]
        return {"scalars": DepthMap(torch.stack(vals, 1).cpu(), rows, cols, "learned value")}


SUB = ("attn", "mlp")
