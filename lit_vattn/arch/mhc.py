"""mHC: Hyper-Connections whose stream mixing is projected onto doubly stochastic matrices.

Xie et al. (DeepSeek), "mHC: Manifold-Constrained Hyper-Connections", 2025,
https://arxiv.org/abs/2512.24880; code followed: DeepSeek-V4's ``DeepseekV4HyperConnection`` and
``DeepseekV4HyperHead`` as released in ``transformers`` (``models/deepseek_v4/modeling_deepseek_v4.py``,
5.x), the authors' production form; ``tests/arch/test_mhc.py`` holds ours equal to it.

As in Hyper-Connections the residual stream is n copies H in R^{B x T x n x D}. Around every sub-layer f
(attention and MLP separately, sub-layer k), from the whole n-stream state of each token:

    x~     = RMSNorm(vec(H))          (unweighted, over n*D)                 (B, T, nD)
    [p, q, c] = x~ W_k^T              W_k: ((2+n) n, nD)                      (B, T, n), (B, T, n), (B, T, n*n)
    H_pre  = sigmoid(s_pre,k * p + b_pre,k) + eps                            (B, T, n)     reads the streams
    H_post = 2 sigmoid(s_post,k * q + b_post,k)                              (B, T, n)     writes the output
    H_res  = Sinkhorn(s_res,k * c + b_res,k)                                  (B, T, n, n)  doubly stochastic
    x      = sum_i H_pre[i] H_i                                               (B, T, D)     the branch input
    H_new  = H_res^T H + H_post (x) f(x)                                      (B, T, n, D)
    readout ("head"): sum_i (sigmoid(s_h * x~ W_h^T + b_h) + eps)[i] H_i      (the release's HyperHead)

Sinkhorn as released: softmax over each row (+ eps), a column normalisation, then ``sinkhorn_iters - 1``
alternating row and column normalisations (each with eps in the denominator); the paper's t_max = 20.

Init (the release's ``_init_weights``; the paper's notes here state no other): W ~ N(0, ``init_std``^2),
b = 0, s = 1, so at init each token's H_res is near the uniform 1/n matrix and H_pre near 1/2: unlike
HC, mHC does not start as the vanilla decoder.

Departures, as switches: ``readout: sum`` (lucidrains' port and the HC reader: the streams summed) instead
of the learned head. The mean square of the flattened state uses the model's ``norm_eps``.

Cost: parameters per sub-layer (2+n) n (nD + 1) + 3; n x the residual stream's activation memory.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from lit_vattn.arch.base import Arch, DepthMap, DepthMemory
from lit_vattn.arch.registry import register
from lit_vattn.model.config import GPTConfig


def sinkhorn(logits: Tensor, iters: int, eps: float) -> Tensor:
    """(..., n, n) logits -> a matrix whose rows and columns each sum to 1 (to ``eps``), as released."""
    m = torch.softmax(logits, dim=-1) + eps
    m = m / (m.sum(dim=-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        m = m / (m.sum(dim=-1, keepdim=True) + eps)
        m = m / (m.sum(dim=-2, keepdim=True) + eps)
    return m


@register(
    title="mHC",
    paper="[Xie et al., 2025](https://arxiv.org/abs/2512.24880)",
    reads="n residual streams; their mixing projected onto doubly stochastic matrices (Sinkhorn-Knopp)",
    exact_at_init=False,
)
class ManifoldHyperConnections(Arch):
    name = "mhc"

    def __init__(
        self,
        n: int = 4,
        sinkhorn_iters: int = 20,
        eps: float = 1e-6,
        init_std: float = 0.02,
        readout: Literal["head", "sum"] = "head",
    ):
        """
        Args:
            n: Number of residual streams (the paper's and DeepSeek-V4's setting is 4).
            sinkhorn_iters: Sinkhorn-Knopp iterations (the paper's t_max: 20).
            eps: The release's ``hc_eps``: added to H_pre and to every Sinkhorn denominator.
            init_std: Standard deviation of the projections W at init (the release's initializer_range).
            readout: "head": the release's learned sigmoid collapse of the streams before the final norm;
                "sum": the streams summed (lucidrains' port, as the HC reader).
        """
        super().__init__()
        self.n, self.sinkhorn_iters, self.eps = n, sinkhorn_iters, eps
        self.init_std, self.readout_kind = init_std, readout

    def validate(self, cfg: GPTConfig) -> None:
        if self.n < 1:
            raise ValueError(f"ManifoldHyperConnections.n={self.n} must be >= 1")
        if self.sinkhorn_iters < 1:
            raise ValueError(f"ManifoldHyperConnections.sinkhorn_iters={self.sinkhorn_iters} must be >= 1")
        if self.readout_kind not in ("head", "sum"):
            raise ValueError(f"ManifoldHyperConnections.readout={self.readout_kind!r}: choose 'head' or 'sum'")

    def bind(self, cfg: GPTConfig) -> "ManifoldHyperConnections":
        super().bind(cfg)
        K, n, D = 2 * cfg.n_layer, self.n, cfg.d_model  # one connection per sub-layer
        self.fn = nn.Parameter(torch.empty(K, (2 + n) * n, n * D))
        self.base = nn.Parameter(torch.empty(K, (2 + n) * n))
        self.scale = nn.Parameter(torch.empty(K, 3))  # pre, post, res
        mixing = [self.fn, self.base, self.scale]
        if self.readout_kind == "head":
            self.head_fn = nn.Parameter(torch.empty(n, n * D))
            self.head_base = nn.Parameter(torch.empty(n))
            self.head_scale = nn.Parameter(torch.empty(1))
            mixing += [self.head_fn, self.head_base, self.head_scale]
        for p in mixing:
            p.depth_mix = True
        self.reset_parameters()
        return self

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.fn, std=self.init_std)
        self.base.zero_()
        self.scale.fill_(1.0)
        if self.readout_kind == "head":
            nn.init.normal_(self.head_fn, std=self.init_std)
            self.head_base.zero_()
            self.head_scale.fill_(1.0)

    def init_stream(self, x0: Tensor, mem: DepthMemory) -> Tensor:
        return x0.unsqueeze(-2).expand(*x0.shape[:-1], self.n, x0.shape[-1])  # (B, T, n, D)

    def _normed(self, H: Tensor) -> Tensor:
        flat = H.flatten(-2).float()  # (B, T, nD): the weights are computed in float32, as released
        return flat * torch.rsqrt(flat.square().mean(-1, keepdim=True) + self.cfg.norm_eps)

    def connections(self, k: int, H: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """H_pre (B, T, n), H_post (B, T, n), H_res (B, T, n, n) of sub-layer k, in float32."""
        n = self.n
        proj = self._normed(H) @ self.fn[k].float().T  # (B, T, (2+n) n)
        p, q, c = proj.split([n, n, n * n], dim=-1)
        bp, bq, bc = self.base[k].float().split([n, n, n * n])
        sp, sq, sc = self.scale[k].float().unbind(0)
        pre = torch.sigmoid(p * sp + bp) + self.eps
        post = 2 * torch.sigmoid(q * sq + bq)
        res = sinkhorn((c * sc + bc).unflatten(-1, (n, n)), self.sinkhorn_iters, self.eps)
        return pre, post, res

    def inputs(self, l: int, s: str, stream: Tensor, mem: DepthMemory) -> Tensor:
        k = 2 * l + (s == "mlp")
        pre, post, res = self.connections(k, stream)
        self.slot(mem)["pending"] = (post, res)
        if self.record_maps:
            self._record(k, pre, post)
        return (pre.unsqueeze(-1) * stream).sum(-2).to(stream.dtype)  # (B, T, D)

    def update(self, l: int, s: str, stream: Tensor, out: Tensor, mem: DepthMemory) -> Tensor:
        post, res = self.slot(mem).pop("pending")
        dt = stream.dtype
        return post.to(dt).unsqueeze(-1) * out.unsqueeze(-2) + res.to(dt).mT @ stream  # (B, T, n, D)

    def readout(self, stream: Tensor, mem: DepthMemory) -> Tensor:
        if self.readout_kind == "sum":
            return stream.sum(-2)  # (B, T, D)
        mix = self._normed(stream) @ self.head_fn.float().T  # (B, T, n)
        pre = torch.sigmoid(mix * self.head_scale.float() + self.head_base.float()) + self.eps
        return (pre.unsqueeze(-1) * stream).sum(-2).to(stream.dtype)  # (B, T, D)

    # --- analysis ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _record(self, k: int, pre: Tensor, post: Tensor) -> None:
        if not hasattr(self, "_map"):
            self._map = {}
        a, b = pre.reshape(-1, self.n).mean(0), post.reshape(-1, self.n).mean(0)
        prev = self._map.get(k)
        self._map[k] = (a, b, 1) if prev is None else (prev[0] + a, prev[1] + b, prev[2] + 1)

    def reset_maps(self) -> None:
        self._map = {}

    @torch.no_grad()
    def depth_map(self) -> dict[str, DepthMap]:
        """'read': (2L, n) H_pre, each stream's weight in each sub-layer's branch input; 'write': (2L, n)
        H_post; the token mean under record_maps, else their value at a zero projection (the biases)."""
        K, n = self.base.shape[0], self.n
        rec = getattr(self, "_map", {})
        read, write = torch.zeros(K, n), torch.zeros(K, n)
        for k in range(K):
            if k in rec:
                a, b, c = rec[k]
                read[k], write[k] = (a / c).cpu(), (b / c).cpu()
            else:
                read[k] = (torch.sigmoid(self.base[k, :n].float()) + self.eps).cpu()
                write[k] = (2 * torch.sigmoid(self.base[k, n : 2 * n].float())).cpu()
        rows = [f"block {k // 2} {('attn', 'mlp')[k % 2]}" for k in range(K)]
        cols = [f"stream {i}" for i in range(n)]
        return {
            "read": DepthMap(read, rows, cols, "weight in the branch input (H_pre)"),
            "write": DepthMap(write, rows, cols, "gain of the branch output (H_post)"),
        }
