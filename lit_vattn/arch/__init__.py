"""Methods: each one is a reader of the depth memory (see ``base.py``), one file per method, each
registered once (``registry.py``; ``registry.registry()``: name -> class). Every registered reader class is importable from here, e.g.
``lit_vattn.arch.VerticalAttention`` (the ``class_path`` a config names)."""

from __future__ import annotations

from typing import Union

from lit_vattn.arch import registry
from lit_vattn.arch.base import Arch, AttnInputs, Composed, DepthMap, DepthMemory
from lit_vattn.arch.registry import Method, methods, register

# the reader classes, found by the registry in this package's modules
globals().update({m.cls.__name__: m.cls for m in methods().values()})

__all__ = [
    "Arch",
    "AttnInputs",
    "Composed",
    "DepthMap",
    "DepthMemory",
    "Method",
    "as_reader",
    "methods",
    "register",
    "registry",
    *sorted(m.cls.__name__ for m in methods().values()),
]


def as_reader(arch: Union[None, Arch, list[Arch]]) -> Arch:
    """One reader from what a config gives: none (vanilla), one, or a list to compose."""
    if arch is None:
        return methods()["vanilla"].cls()
    if isinstance(arch, (list, tuple)):
        if not arch:
            raise ValueError("arch: an empty list of readers; leave model.init_args.arch out for the vanilla decoder")
        return arch[0] if len(arch) == 1 else Composed(list(arch))
    return arch
