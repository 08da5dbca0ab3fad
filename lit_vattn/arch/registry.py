"""The method registry: one name per method, and every list of methods read from here.

A method's reader file registers its class once::

    @register(title="Vertical Attention", paper="...", reads="...", exact_at_init=False, seed=True,
              controls=("va-frozen", "va-nonorm", "va-previous", "elc-bert"), default_controls=("elc-bert",))
    class VerticalAttention(Arch):
        name = "va"

The class's ``name`` is the method's one name everywhere: the registry key, its config
``configs/arch/<name>.yaml``, its run directories and its table row. Controls and second readings
of a method are configurations only, in ``configs/arch/controls/<control>.yaml``; the tables test
each against its method. Reproduce's default request, the tables' controls, the benchmarks, the
contract tests and the README's method table all derive from ``methods()``, so adding a method
touches its reader file, its config and (optionally) its own test file. Reader modules in this
package are found by ``pkgutil``; a method defined elsewhere registers when its module is imported.
The README's method table is ``lit_vattn.arch.method_table``.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

_CHECKOUT = Path(__file__).resolve().parents[2] / "configs"
# the shipped configs: a checkout's configs/, or the copy an installed wheel carries in lit_vattn/configs/
CONFIG_DIR = _CHECKOUT if _CHECKOUT.is_dir() else Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class Method:
    """What the suite knows of a registered method."""

    name: str
    cls: type
    title: str
    """Its name in the literature, e.g. "Vertical Attention"."""
    paper: str
    """Where it is published: markdown, e.g. "[Xiao et al. 2025](https://arxiv.org/abs/2502.12170)"."""
    reads: str
    """What each layer reads across depth, in a few words (the README's method table)."""
    exact_at_init: bool
    """The network at initialisation is exactly the vanilla decoder (the contract tests check the claim)."""
    seed: bool = False
    """One of the suite's own methods (the primary comparison family) rather than a competitor."""
    controls: tuple[str, ...] = ()
    """Controls and second readings (configs/arch/controls/<c>.yaml) that the tables test against it."""
    default_controls: tuple[str, ...] = ()
    """The controls reproduce's default request runs with every method."""
    order: int = 100
    """Position in every list of methods (then by name): the baseline and the seed methods first."""


_METHODS: dict[str, Method] = {}


def register(
    *,
    title: str,
    paper: str,
    reads: str,
    exact_at_init: bool,
    seed: bool = False,
    controls: tuple[str, ...] = (),
    default_controls: tuple[str, ...] = (),
    order: int = 100,
) -> Callable[[type], type]:
    """Class decorator: register a reader class under its ``name`` attribute."""

    def add(cls: type) -> type:
        name = cls.__dict__.get("name")
        if not name:
            raise TypeError(f"{cls.__name__}: a registered method sets its own `name` (its one name everywhere)")
        old = _METHODS.get(name)
        if old is not None and old.cls.__qualname__ != cls.__qualname__:
            raise ValueError(
                f"method name {name!r} is registered twice: {old.cls.__module__}.{old.cls.__qualname__} "
                f"and {cls.__module__}.{cls.__qualname__}"
            )
        if not set(default_controls) <= set(controls):
            raise ValueError(f"{name}: default_controls {default_controls} must be among its controls {controls}")
        _METHODS[name] = Method(
            name, cls, title, paper, reads, exact_at_init, seed, tuple(controls), tuple(default_controls), order
        )
        return cls

    return add


def _discover() -> None:
    """Import every reader module of this package (each registers its method)."""
    import lit_vattn.arch as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("base", "registry") and not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")


def methods() -> dict[str, Method]:
    """Every registered method, by ``order`` then name: the baseline, the seed methods, the others."""
    _discover()
    return {m.name: m for m in sorted(_METHODS.values(), key=lambda m: (m.order, m.name))}


def registry() -> dict[str, type]:
    """name -> reader class."""
    return {n: m.cls for n, m in methods().items()}


def control_of() -> dict[str, str]:
    """control or reading -> the method it is tested against (besides vanilla)."""
    return {c: m.name for m in methods().values() for c in m.controls}


def seed_methods() -> list[str]:
    """vanilla and the suite's own methods: the least a table must hold to take a modality's name."""
    return [n for n, m in methods().items() if n == "vanilla" or m.seed]


def default_request() -> list[str]:
    """What ``lit-vattn-reproduce`` runs without ``--archs``: every method, then the default controls."""
    ms = methods().values()
    return [m.name for m in ms] + [c for m in ms for c in m.default_controls]


def config_path(name: str, config_dir: Optional[Path] = None) -> Path:
    """The config of a method (``arch/<name>.yaml``) or of a control (``arch/controls/<name>.yaml``)."""
    arch = Path(config_dir or CONFIG_DIR) / "arch"
    for p in (arch / f"{name}.yaml", arch / "controls" / f"{name}.yaml"):
        if p.is_file():
            return p
    return arch / f"{name}.yaml"


def arch_configs(config_dir: Optional[Path] = None) -> list[str]:
    """The names of every method and control config shipped in ``config_dir``."""
    arch = Path(config_dir or CONFIG_DIR) / "arch"
    return sorted(p.stem for p in [*arch.glob("*.yaml"), *arch.glob("controls/*.yaml")])
