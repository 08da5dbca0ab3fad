"""The plain decoder (the baseline every table compares against).

LLaMA-style pre-norm residual decoder (Touvron et al., 2023): every block reads only the residual
stream below it,

    x_attn = h_{l-1},  a_l = Attn(RMSNorm(x_attn)),  m_l = MLP(RMSNorm(x_attn + a_l)),
    h_l = h_{l-1} + (a_l + m_l).

All of it is the base reader's defaults (``lit_vattn/arch/base.py``).
"""

from lit_vattn.arch.base import Arch
from lit_vattn.arch.registry import register


@register(
    title="Vanilla decoder",
    paper="LLaMA-style pre-norm decoder",
    reads="nothing: the plain residual stream",
    exact_at_init=True,
    order=0,
)
class Vanilla(Arch):
    """The plain LLaMA-style decoder: reads nothing from the depth memory."""

    name = "vanilla"
