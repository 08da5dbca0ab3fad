"""``lit-vattn-export``: a trained run as a ``transformers`` model directory.

    lit-vattn-export --ckpt_path runs/text-va/checkpoints/last.ckpt --out exports/text-va
    python -c "import lit_vattn.hf, transformers as t; m = t.AutoModelForCausalLM.from_pretrained('exports/text-va')"
    lm_eval --model hf --model_args pretrained=exports/text-va,trust_remote_code=True --tasks lambada_openai

The directory holds ``config.json`` (the decoder's shape, the method's readers, the vocabulary),
``model.safetensors`` (the decoder's own weights, unchanged), the run's tokenizer where the modality
has a text tokenizer (a ``PreTrainedTokenizerFast`` of its GPT-2 or trained BPE), two modeling files
that register the model for ``AutoConfig`` / ``AutoModelForCausalLM`` (``trust_remote_code=True``;
they import the installed ``lit_vattn``, which holds the code), and a model card from the run's
summary: method and paper, data, parameters, tokens, FLOPs, test NLL and its unit, command, commit.
``--push_to_hub user/name`` uploads the directory (needs internet and a Hugging Face token).
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from lit_vattn.experiments.records import FIT, SUMMARY, TEST, read_summary
from lit_vattn.io import atomic_replace

# written into the directory: transformers imports them with trust_remote_code=True
SHIMS = {
    "configuration_lit_vattn.py": "from lit_vattn.hf.configuration import LitVattnConfig  # noqa: F401\n",
    "modeling_lit_vattn.py": "from lit_vattn.hf.modeling import LitVattnForCausalLM  # noqa: F401\n",
}
AUTO_MAP = {
    "AutoConfig": "configuration_lit_vattn.LitVattnConfig",
    "AutoModelForCausalLM": "modeling_lit_vattn.LitVattnForCausalLM",
}


def readers_of(hparams: dict) -> list[dict]:
    """The method's readers as a run's checkpoint names them: ``[{"class_path", "init_args"}]``."""
    from lit_vattn.train.cli import _plain

    arch = _plain(hparams.get("arch"))
    arch = [] if arch is None else arch if isinstance(arch, list) else [arch]
    if any(not isinstance(a, dict) or "class_path" not in a for a in arch):
        raise ValueError(
            "the checkpoint's hyperparameters name no reader class paths (it was not written by `lit-vattn fit`); "
            "export a checkpoint of a lit-vattn run"
        )
    return [{"class_path": a["class_path"], "init_args": a.get("init_args") or {}} for a in arch]


def method_rows(readers: list[dict]) -> list:
    """The registered methods the readers are (vanilla when none)."""
    from lit_vattn.arch import methods

    by_class = {f"{m.cls.__module__}.{m.cls.__name__}": m for m in methods().values()}
    by_name = {m.cls.__name__: m for m in methods().values()}
    found = [by_class.get(r["class_path"]) or by_name.get(r["class_path"].rpartition(".")[2]) for r in readers]
    return [m for m in found if m is not None] or [methods()["vanilla"]]


def run_summaries(ckpt: Path) -> tuple[dict, dict]:
    """(training stats, test scores) of the checkpoint's run: ``<run>/summary.json``, or for a
    table's run the ``fit/`` and ``test/`` summaries beside each other."""
    run = ckpt.resolve().parent.parent

    def summary(d: Path) -> dict:
        return read_summary(d) if (d / SUMMARY).is_file() else {}

    fit = summary(run)
    test = summary(run.parent / TEST) if run.name == FIT else fit
    return fit.get("stats", {}), test.get("test") or {}


def model_card(ckpt: Path, readers: list[dict], modality: str, params: int, max_seq_len: int) -> str:
    """README.md of the export: what the model is and how it scored, from the run's own summary."""
    import lit_vattn

    stats, test = run_summaries(ckpt)
    ms = method_rows(readers)
    title = " + ".join(m.title for m in ms)
    rows = [
        ("method", f"{title} ({', '.join(m.paper for m in ms)})"),
        (
            "readers",
            ", ".join(f"`{r['class_path']}` {json.dumps(r['init_args'])}" for r in readers) or "none (vanilla)",
        ),
        ("data", modality),
        ("parameters", f"{params:,}"),
        ("tokens seen", f"{stats['tokens_seen']:,}" if "tokens_seen" in stats else "not recorded"),
        (
            "training FLOPs per token",
            f"{stats['flops_per_token']:.4g}" if "flops_per_token" in stats else "not recorded",
        ),
        ("steps", str(stats.get("global_step", "not recorded"))),
        ("trained on", str(stats.get("device", "not recorded"))),
        ("commit", str(stats.get("commit", "not recorded"))),
    ]
    scored = {k: v for k, v in test.items() if k != "step"}
    rows += [(f"test {k}", f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in sorted(scored.items())]
    if not scored:
        rows.append(("test", f"not scored: `lit-vattn test --ckpt_path {ckpt}` first"))
    config = ckpt.resolve().parent.parent / "config.yaml"
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"""---
library_name: transformers
tags: [lit-vattn, {", ".join(m.name for m in ms)}, {modality}]
---

# {title} on {modality}

Trained with lit-vattn {lit_vattn.__version__}; exported from `{ckpt}`.

| | |
|---|---|
{table}

Train command: `lit-vattn fit --config {config}` (the run's saved configuration).

```python
import lit_vattn.hf  # registers the architecture (pip install lit-vattn)
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("<this directory>")
```

`generate()` recomputes the whole sequence at each step (exact for every reader; no KV cache through
transformers), up to the trained context of {max_seq_len} tokens. Rows must be unpadded.
"""


def export(ckpt_path: str, out: str, config: Optional[str] = None, push_to_hub: Optional[str] = None) -> Path:
    """Write the directory (whole or not at all: built beside ``out`` and renamed into place)."""
    import lit_vattn
    from lit_vattn.hf import LitVattnConfig, LitVattnForCausalLM
    from lit_vattn.tools import loader

    ckpt, out = Path(ckpt_path), Path(out)
    model, dm = loader.load(str(ckpt), config)  # refuses a missing checkpoint or config by name
    hparams = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True).get("hyper_parameters") or {}
    readers = readers_of(hparams)
    net = model.net
    tok = getattr(dm, "tokenizer", None)
    eot = getattr(tok, "eot_id", None)
    cfg = LitVattnConfig(
        gpt=asdict(net.cfg),
        readers=readers,
        vocab_size=net.vocab_size,
        lit_vattn_version=lit_vattn.__version__,
        architectures=["LitVattnForCausalLM"],
        auto_map=AUTO_MAP,
        **({"eos_token_id": eot, "bos_token_id": eot, "pad_token_id": eot} if eot is not None else {}),
    )
    hf = LitVattnForCausalLM(cfg)
    hf.net.load_state_dict(net.state_dict())
    hf.eval()
    tmp = out.with_name(f".{out.name}.tmp-export")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        hf.save_pretrained(tmp)
        to_hf = getattr(tok, "to_transformers", None)
        if callable(to_hf):
            t = to_hf()
            t.model_max_length = net.cfg.max_seq_len
            t.save_pretrained(tmp)
        for name, code in SHIMS.items():
            (tmp / name).write_text(code)
        card = model_card(ckpt, readers, dm.modality.name, net.num_params(), net.cfg.max_seq_len)
        (tmp / "README.md").write_text(card)
        atomic_replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if push_to_hub:
        from huggingface_hub import HfApi

        HfApi().create_repo(push_to_hub, exist_ok=True)
        HfApi().upload_folder(folder_path=str(out), repo_id=push_to_hub)
    return out


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt_path", required=True, help="a checkpoint of a lit-vattn run")
    p.add_argument("--config", default=None, help="the run's YAML; default <run>/config.yaml")
    p.add_argument("--out", required=True, help="the directory to write (replaced whole if it exists)")
    p.add_argument("--push_to_hub", default=None, metavar="USER/NAME", help="also upload it to this Hub repository")
    args = p.parse_args(argv)
    out = export(args.ckpt_path, args.out, args.config, args.push_to_hub)
    print(f"wrote {out}: AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)")


if __name__ == "__main__":
    main()
