"""The suite's models as ``transformers`` models: ``LitVattnConfig`` and ``LitVattnForCausalLM``,
registered with ``AutoConfig`` / ``AutoModelForCausalLM`` when this package is imported (as
flash-linear-attention registers its models), so an exported directory (``lit-vattn-export``) loads
with ``AutoModelForCausalLM.from_pretrained(dir)`` after ``import lit_vattn.hf``, or with
``trust_remote_code=True`` alone (the directory's modeling files import this package)."""

from lit_vattn.hf.configuration import LitVattnConfig
from lit_vattn.hf.modeling import LitVattnForCausalLM


def register() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoConfig.register(LitVattnConfig.model_type, LitVattnConfig, exist_ok=True)
    AutoModelForCausalLM.register(LitVattnConfig, LitVattnForCausalLM, exist_ok=True)


register()

__all__ = ["LitVattnConfig", "LitVattnForCausalLM", "register"]
