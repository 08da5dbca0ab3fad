"""lit_vattn: Transformer LMs whose layers reach each other through attention across depth."""

from lit_vattn.config import GPTConfig
from lit_vattn.model import GPT

__all__ = ["GPT", "GPTConfig", "LanguageModel"]


def __getattr__(name):  # keep `import lit_vattn` light: Lightning loads only when asked for
    if name == "LanguageModel":
        from lit_vattn.module import LanguageModel

        return LanguageModel
    raise AttributeError(name)
