"""The reader interface: how a depth-connection method plugs into the decoder.

The model (``lit_vattn/model/decoder.py``) runs the same pre-norm blocks for every method and asks the
reader, at each hook, what to feed and what to keep. One forward pass, with the hooks a reader may
override (the defaults, in brackets, are the plain pre-norm residual decoder):

    stream = reader.init_stream(x0, mem)                  [x0; a reader may widen it to (B, T, n, D)]
    for block l, sub-layer s in ("attn", "mlp"):
        x = reader.inputs(l, s, stream, mem)              [stream]   residual input of the sub-layer;
                                                          for "attn" optionally AttnInputs(x, q, k, v):
                                                          separate inputs of the Q, K, V projections
        attn: q, k, v = rope(W_qkv norm1(.)) ; reader.qkv(l, q, k, v, mem)   [unchanged]
              y = reader.attend(l, attn, q, k, v, mem)    [causal attention]
              out = W_o y
        mlp:  out = SwiGLU(norm2(x))
        stream = reader.update(l, s, stream, out, mem)    [attn: x + a;  mlp: x_attn + (a + m)]
    h = reader.readout(stream, mem)                       [stream]   what the final norm + head read

The memory (``DepthMemory``) records what any method may need: the embedding x0, each
sub-layer's input, its input after the block's norm and its output, the stream after every block, each layer's own post-RoPE K/V when a
reader asks for it (``kv_layers``), and one private slot per reader. Readers compose: a model may
take a list of readers (e.g. Vertical Attention + value residual) as long as no two override the
same hook (``Composed`` refuses that, naming both).

Readers are nn.Modules built in two steps: the constructor takes only the switches (so a YAML can
name them, and ``switches()`` returns exactly the constructor's arguments), ``bind(cfg)`` creates
the parameters once the model's shape is known.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_vattn.model import attention
from lit_vattn.model.config import GPTConfig
from lit_vattn.model.memory import DepthMemory
from lit_vattn.model.rope import apply_rope

SUBLAYERS = ("attn", "mlp")
HOOKS = ("init_stream", "inputs", "qkv", "attend", "update", "readout")


def project_kv(attn: nn.Module, x: Tensor, rope: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """A layer's K/V projection (post-RoPE, same positions) applied to another input (B, T, D): how
    a layer attends to states other than its own input (LAS's features, SLA's ``kv_source: project``)."""
    D = attn.n_head * attn.head_dim
    k, v = F.linear(x, attn.qkv.weight[D:]).chunk(2, dim=-1)
    return apply_rope(attn.split_heads(k), *rope), attn.split_heads(v)


class AttnInputs(NamedTuple):
    """Inputs of an attention sub-layer whose Q, K and V read different mixtures (each (B, T, D),
    before the block's norm); ``x`` is the residual input the default update adds the output to.
    ``norm_k`` / ``norm_v``: the reader's own norm for that input in place of the block's (MUDDFormer's
    separate pre-attention norms); None = the block's."""

    x: Tensor
    q: Tensor
    k: Tensor
    v: Tensor
    norm_k: Optional[nn.Module] = None
    norm_v: Optional[nn.Module] = None


class Arch(nn.Module):
    """Base reader = the plain pre-norm residual decoder: reads nothing from the memory.

    Subclasses override hooks (``HOOKS``) and, when they have parameters, ``bind`` and
    ``reset_parameters``; analysis asks them for ``depth_map`` and ``lens_states``."""

    name = "vanilla"
    cfg: GPTConfig
    record_maps: bool = False  # while True, readers accumulate per-token statistics for depth_map

    def __init__(self):
        super().__init__()

    def __init_subclass__(cls, **kwargs):
        """Record the constructor's arguments (with defaults) as the reader's switches, so that no
        switch can be left out of checkpoints, tables and the FLOPs twin."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        sig = inspect.signature(init)

        @functools.wraps(init)
        def wrapped(self, *args, **kw):
            init(self, *args, **kw)
            if type(self).__init__ is wrapped:  # the outermost constructor records
                bound = sig.bind(self, *args, **kw)
                bound.apply_defaults()
                self._switches = {k: v for k, v in list(bound.arguments.items())[1:]}

        cls.__init__ = wrapped

    def bind(self, cfg: GPTConfig) -> "Arch":
        self.cfg = cfg
        self.validate(cfg)
        return self

    def validate(self, cfg: GPTConfig) -> None:
        """Raise ValueError naming the switch when a setting cannot work for this shape."""

    def reset_parameters(self) -> None:
        """(Re-)apply the reader's own init; called after the model's base init."""

    def switches(self) -> dict:
        """The constructor arguments, for checkpoints, tables and ``spawn``."""
        return dict(getattr(self, "_switches", {}))

    def spawn(self) -> "Arch":
        """A fresh, unbound reader with the same switches (e.g. for a FLOP-counting twin)."""
        return type(self)(**self.switches())

    def idle_hooks(self) -> frozenset:
        """Hooks this class overrides that its current switches do not use (they behave as the
        base's): left free for another reader in a composition."""
        return frozenset()

    def kv_layers(self) -> frozenset:
        """Layers whose own post-RoPE K/V the model must keep in ``mem.kv`` for this reader."""
        return frozenset()

    def slot(self, mem: DepthMemory) -> dict:
        """This reader's private part of the memory."""
        return mem.private.setdefault(self.name, {})

    # --- hooks ------------------------------------------------------------------------------------
    def init_stream(self, x0: Tensor, mem: DepthMemory) -> Tensor:
        return x0

    def inputs(self, l: int, s: str, stream: Tensor, mem: DepthMemory) -> Union[Tensor, AttnInputs]:
        return stream

    def qkv(self, l: int, q: Tensor, k: Tensor, v: Tensor, mem: DepthMemory) -> tuple[Tensor, Tensor, Tensor]:
        return q, k, v

    def attend(self, l: int, attn: nn.Module, q: Tensor, k: Tensor, v: Tensor, mem: DepthMemory) -> Tensor:
        return attention.causal(q, k, v)

    def update(self, l: int, s: str, stream: Tensor, out: Tensor, mem: DepthMemory) -> Tensor:
        """Pre-norm residual: after attention x + a; after the MLP the block's input plus its
        whole output, x + (a + m) (the block output a + m is formed once, as readers that mix
        block outputs use it)."""
        if s == "attn":
            return mem.inputs[l]["attn"] + out
        return mem.inputs[l]["attn"] + (mem.outputs[l]["attn"] + out)

    def readout(self, stream: Tensor, mem: DepthMemory) -> Tensor:
        return stream

    # --- analysis ---------------------------------------------------------------------------------
    def lens_states(self, mem: DepthMemory, out: Tensor) -> list[tuple[str, Tensor]]:
        """The states the network consumes, in depth order, for the logit lens: each block's
        residual input (what its attention reads; for a reader with separate Q/K/V inputs, the
        residual one), then what the final norm and head read."""
        return [(f"in{l}", d["attn"]) for l, d in enumerate(mem.inputs)] + [("readout", out)]

    def ablation_units(self) -> list[str]:
        """Names of the sources an analysis can remove one at a time (``ablate``), to measure
        their use by the NLL change; [] for a reader without separable sources."""
        return []

    def ablate(self, units: frozenset) -> None:
        """Remove these sources (names from ``ablation_units``) from the forward pass until called
        again with an empty set. Analysis only: the model is not trained this way."""
        if units:
            raise ValueError(f"{type(self).__name__} has no sources to ablate")

    def reset_maps(self) -> None:
        """Zero the statistics accumulated while ``record_maps`` was on."""
        for name, buf in self.named_buffers():
            if name.startswith("map_"):
                buf.zero_()

    @torch.no_grad()
    def depth_map(self) -> dict[str, "DepthMap"]:
        """Named maps for analysis (depth-attention weights, routing, mass per source)."""
        return {}


@dataclass
class DepthMap:
    """One analysis map: ``values`` (rows x cols, or one row drawn as bars) with axis labels."""

    values: Tensor
    rows: list[str]
    cols: list[str]
    what: str  # what a cell is, for the colour bar / y axis


def overridden(reader: Arch) -> set[str]:
    """The hooks a reader overrides, less those its switches leave to the default
    (``idle_hooks``: a reading that does not use a hook its class defines composes as if it had none)."""
    return {h for h in HOOKS if getattr(type(reader), h) is not getattr(Arch, h)} - set(reader.idle_hooks())


class Composed(Arch):
    """Several readers in one model: each hook is served by the one reader that overrides it (the
    base default when none does); two readers overriding the same hook is an error."""

    name = "composed"

    def __init__(self, readers: list[Arch]):
        """
        Args:
            readers: The readers to combine, e.g. [VerticalAttention, ValueResidual].
        """
        super().__init__()
        self.readers = nn.ModuleList(readers)
        names = [r.name for r in readers]
        if len(set(names)) != len(names):
            raise ValueError(f"arch: the same reader appears twice in {names}")
        self.owner: dict[str, Optional[Arch]] = {}
        for r in readers:
            for h in overridden(r):
                if h in self.owner:
                    raise ValueError(
                        f"arch: {type(self.owner[h]).__name__} and {type(r).__name__} both override the '{h}' hook; "
                        "they cannot be combined in one model (pass one of them as model.init_args.arch)"
                    )
                self.owner[h] = r
        for h in HOOKS:  # route each hook to its owner's bound method
            if h in self.owner:
                object.__setattr__(self, h, getattr(self.owner[h], h))

    def switches(self) -> dict:
        return {"readers": [{"class": type(r).__name__, **r.switches()} for r in self.readers]}

    def spawn(self) -> "Composed":
        return Composed([r.spawn() for r in self.readers])

    def bind(self, cfg: GPTConfig) -> "Composed":
        self.cfg = cfg
        for r in self.readers:
            r.bind(cfg)
        return self

    def reset_parameters(self) -> None:
        for r in self.readers:
            r.reset_parameters()

    def kv_layers(self) -> frozenset:
        return frozenset().union(*(r.kv_layers() for r in self.readers))

    def lens_states(self, mem: DepthMemory, out: Tensor) -> list[tuple[str, Tensor]]:
        owner = next((r for r in self.readers if type(r).lens_states is not Arch.lens_states), None)
        return (owner or super()).lens_states(mem, out)

    @property
    def record_maps(self) -> bool:  # type: ignore[override]
        return any(r.record_maps for r in self.readers)

    @record_maps.setter
    def record_maps(self, on: bool) -> None:
        for r in self.readers:
            r.record_maps = on

    def reset_maps(self) -> None:
        for r in self.readers:
            r.reset_maps()

    def ablation_units(self) -> list[str]:
        return [f"{r.name}:{u}" for r in self.readers for u in r.ablation_units()]

    def ablate(self, units: frozenset) -> None:
        for r in self.readers:
            r.ablate(frozenset(u.split(":", 1)[1] for u in units if u.startswith(f"{r.name}:")))

    @torch.no_grad()
    def depth_map(self) -> dict[str, DepthMap]:
        return {f"{r.name}_{k}": m for r in self.readers for k, m in r.depth_map().items()}
