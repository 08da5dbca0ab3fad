"""Text prompts and samples: a string (or a .txt file) through the run's tokenizer; samples as .txt."""

from __future__ import annotations

from pathlib import Path

from datamodules.samples import Samples
from lit_vattn.io import write_text


class TextSamples(Samples):
    def __init__(self, dm, context: int):
        super().__init__(dm, context)
        self.separator = dm.tokenizer.eot_id

    def prompt(self, args) -> list[int]:
        if args.prompt is None:
            return [self.separator]
        text = args.prompt
        if Path(text).suffix == ".txt" and Path(text).is_file():
            text = Path(text).read_text(encoding="utf-8")
        ids = self.dm.tokenizer.encode_batch([text])[0]
        back = self.dm.tokenizer.decode(ids)
        if back != text:  # e.g. characters outside a trained vocabulary, or the separator's own spelling
            i = next((j for j, (a, b) in enumerate(zip(text, back)) if a != b), min(len(text), len(back)))
            raise SystemExit(
                f"--prompt: the run's tokenizer ({self.dm.tokenizer.spec()}) cannot encode the prompt "
                f"from {text[i : i + 24]!r} on (it decodes back as {back[i : i + 24]!r}); remove or "
                "replace those characters"
            )
        return [self.separator, *ids]  # a document starts after the separator, as in training

    def write(self, ids: list[int], stem: Path) -> list[Path]:
        out = stem.with_suffix(".txt")
        write_text(out, self.dm.decode([i for i in ids if i != self.separator]))
        return [out]
