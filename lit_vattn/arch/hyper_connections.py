"""Hyper-Connections (HC): n residual streams with learned width and depth connections.

Zhu, Huang, Chen, Zhou, Wu, Yang, Chen, Yang, Zhou. "Hyper-Connections". ICLR 2025,
https://arxiv.org/abs/2409.19606 (Appendix J, Algorithm 2); code followed:
github.com/lucidrains/hyper-connections (``hyper_connections.py``), which
``tests/arch/test_hyper_connections.py`` runs beside ours (the ``parity`` extra): equal outputs and
gradients per sub-layer, the same init.

The residual stream is widened to n copies H in R^{B x T x n x D} (the embedding repeated n times)
and around every sub-layer f (attention and MLP separately, sub-layer k):

    H^     = RMSNorm_k(H)                                        (B, T, n, D)
    A      = A_k + s_a,k * tanh(H^ W_a,k)                        (B, T, n, n+1)  width connections
    beta   = b_k + s_b,k * tanh(H^ w_b,k)                        (B, T, n)       depth connections
    [x, H'] = A^T H        x = sum_i A[i, 0] H_i  (branch input),  H'_j = sum_i A[i, j+1] H_i
    H_new  = H' + beta (x) f(x)                                   (B, T, n, D)
    readout: sum of the n streams (before the final norm)

"static" (SHC) drops the tanh terms. Init: A_k's first column one-hot on stream (k mod n), the rest
the identity; b_k = 1; W_a = w_b = 0; s_a = s_b = 0.01. All streams then stay copies of the
pre-norm residual stream, so the model equals vanilla up to the factor n that the final RMSNorm
removes (tested: logits equal to vanilla's within float rounding and the norm's eps).

Cost: n x the residual stream's activation memory and I/O; parameters per sub-layer
n(n+1) + n + D(n+3) + 2 (dynamic: gains, W_a, w_b, scales).

The manifold-constrained variant is its own method, ``mhc`` (``mhc.py``).

Reader hooks: ``init_stream`` (widen), ``inputs`` (branch input), ``update``, ``readout``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lit_vattn.arch.base import Arch, DepthMap, DepthMemory
from lit_vattn.arch.registry import register
from lit_vattn.model.config import GPTConfig


@register(
    title="Hyper-Connections",
    paper="[Zhu et al., ICLR 2025](https://arxiv.org/abs/2409.19606)",
    reads="n residual streams mixed around every sub-layer (static or dynamic)",
    exact_at_init=False,
)
class HyperConnections(Arch):
    name = "hc"

    def __init__(self, n: int = 4, dynamic: bool = True, dynamic_scale: float = 0.01):
        """
        Args:
            n: Expansion rate: number of residual streams (the paper's headline setting is 4).
            dynamic: DHC: input-dependent (tanh) terms on the width and depth connections;
                false = SHC, static connections only.
            dynamic_scale: Initial value of the learned scales s_a, s_b of the dynamic terms.
        """
        super().__init__()
        self.n, self.dynamic, self.dynamic_scale = n, dynamic, dynamic_scale

    def validate(self, cfg: GPTConfig) -> None:
        if self.n < 1:
            raise ValueError(f"HyperConnections.n={self.n} must be >= 1 (1 stream is the vanilla decoder)")

    def bind(self, cfg: GPTConfig) -> "HyperConnections":
        super().bind(cfg)
        K, n, D = 2 * cfg.n_layer, self.n, cfg.d_model  # one connection per sub-layer
        self.static_alpha = nn.Parameter(torch.zeros(K, n, n + 1))
        self.static_beta = nn.Parameter(torch.ones(K, n))
        mixing = [self.static_alpha, self.static_beta]
        if self.dynamic:
            self.norm_weight = nn.Parameter(torch.ones(K, D))  # RMSNorm_k gains
            self.dyn_alpha = nn.Parameter(torch.zeros(K, D, n + 1))
            self.dyn_beta = nn.Parameter(torch.zeros(K, D))
            self.alpha_scale = nn.Parameter(torch.full((K,), float(self.dynamic_scale)))
            self.beta_scale = nn.Parameter(torch.full((K,), float(self.dynamic_scale)))
            mixing += [self.norm_weight, self.dyn_alpha, self.dyn_beta, self.alpha_scale, self.beta_scale]
        for p in mixing:
            p.depth_mix = True
        self.reset_parameters()
        return self

    @torch.no_grad()
    def reset_parameters(self) -> None:
        n = self.n
        self.static_alpha.zero_()
        for k in range(self.static_alpha.shape[0]):
            self.static_alpha[k, k % n, 0] = 1.0  # the branch reads stream k mod n
            self.static_alpha[k, :, 1:] = torch.eye(n)  # the streams carry over unchanged
        self.static_beta.fill_(1.0)
        if self.dynamic:
            self.norm_weight.fill_(1.0)
            self.dyn_alpha.zero_()
            self.dyn_beta.zero_()
            self.alpha_scale.fill_(self.dynamic_scale)
            self.beta_scale.fill_(self.dynamic_scale)

    def init_stream(self, x0: Tensor, mem: DepthMemory) -> Tensor:
        return x0.unsqueeze(-2).expand(*x0.shape[:-1], self.n, x0.shape[-1])  # (B, T, n, D)

    def _connections(self, k: int, H: Tensor) -> tuple[Tensor, Tensor]:
        """A (B, T, n, n+1) or (n, n+1), beta (B, T, n) or (n,) of sub-layer k.

        The dynamic terms read RMSNorm_k(H) through one (D, n+2) projection; since the norm scales
        each stream's row by one number, tanh(RMSNorm(H) W) = tanh((H (g * W)) / rms(H)): the gain g is
        folded into W and the division applied to the n+2 outputs, so no normalised copy of the n-stream
        state is written or read back (forward or backward)."""
        A, beta = self.static_alpha[k].to(H.dtype), self.static_beta[k].to(H.dtype)
        if not self.dynamic:
            return A, beta
        n = self.n
        W = torch.cat([self.dyn_alpha[k], self.dyn_beta[k].unsqueeze(-1)], -1) * self.norm_weight[k].unsqueeze(-1)
        acc = torch.promote_types(H.dtype, torch.float32)  # the mean square in at least float32
        ms = torch.linalg.vector_norm(H, dim=-1, keepdim=True, dtype=acc).square() / H.shape[-1]  # (B, T, n, 1)
        dyn = torch.tanh((H @ W.to(H.dtype)) * torch.rsqrt(ms + self.cfg.norm_eps).to(H.dtype))  # (B, T, n, n+2)
        A = A + self.alpha_scale[k].to(H.dtype) * dyn[..., : n + 1]  # (B, T, n, n+1)
        beta = beta + self.beta_scale[k].to(H.dtype) * dyn[..., n + 1]  # (B, T, n)
        return A, beta

    def inputs(self, l: int, s: str, stream: Tensor, mem: DepthMemory) -> Tensor:
        k = 2 * l + (s == "mlp")
        A, beta = self._connections(k, stream)
        mixed = torch.einsum("...ij,...id->...jd", A, stream)  # (B, T, n+1, D): one batched product
        self.slot(mem)["pending"] = (mixed[..., 1:, :], beta)  # H', beta for this sub-layer's update
        if self.record_maps:
            self._record(k, A, beta)
        return mixed[..., 0, :]  # (B, T, D): the branch input

    def update(self, l: int, s: str, stream: Tensor, out: Tensor, mem: DepthMemory) -> Tensor:
        carried, beta = self.slot(mem).pop("pending")
        return torch.addcmul(carried, beta.unsqueeze(-1), out.unsqueeze(-2))  # (B, T, n, D), one pass

    def readout(self, stream: Tensor, mem: DepthMemory) -> Tensor:
        return stream.sum(-2)  # (B, T, D)

    # --- analysis ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _record(self, k: int, A: Tensor, beta: Tensor) -> None:
        if not hasattr(self, "_map"):
            self._map = {}
        a, b = A.float().reshape(-1, self.n, self.n + 1).mean(0), beta.float().reshape(-1, self.n).mean(0)
        prev = self._map.get(k)
        self._map[k] = (a, b, 1) if prev is None else (prev[0] + a, prev[1] + b, prev[2] + 1)

    def reset_maps(self) -> None:
        self._map = {}

    @torch.no_grad()
    def depth_map(self) -> dict[str, DepthMap]:
        """'read': (2L, n) weight of each stream in each sub-layer's branch input; 'write': (2L, n)
        the depth connections beta; both the token mean under record_maps, else the static part."""
        K = self.static_alpha.shape[0]
        rec = getattr(self, "_map", {})
        read, write = torch.zeros(K, self.n), torch.zeros(K, self.n)
        for k in range(K):
            if k in rec:
                a, b, c = rec[k]
                read[k], write[k] = (a[:, 0] / c).cpu(), (b / c).cpu()
            else:
                read[k], write[k] = self.static_alpha[k, :, 0].float().cpu(), self.static_beta[k].float().cpu()
        rows = [f"block {k // 2} {('attn', 'mlp')[k % 2]}" for k in range(K)]
        cols = [f"stream {i}" for i in range(self.n)]
        return {
            "read": DepthMap(read, rows, cols, "weight in the branch input"),
            "write": DepthMap(write, rows, cols, "gain of the branch output"),
        }
