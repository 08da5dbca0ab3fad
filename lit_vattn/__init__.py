"""lit_vattn: Transformer LMs whose layers reach each other through attention across depth."""

from lit_vattn import _moved
from lit_vattn.model.config import GPTConfig
from lit_vattn.model.decoder import GPT

_moved.install()  # configs and checkpoints saved by 0.2 name modules that have moved since


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lit-vattn")
    except PackageNotFoundError:  # a checkout on sys.path without an install
        return "unknown"


__version__ = _version()

__all__ = ["GPT", "GPTConfig", "LanguageModel"]


def __getattr__(name):  # keep `import lit_vattn` light: Lightning loads only when asked for
    if name == "LanguageModel":
        from lit_vattn.train.module import LanguageModel

        return LanguageModel
    raise AttributeError(name)
