"""Music prompts and samples: a MIDI file's first bars through the run's miditok tokenizer; samples
as .mid with a piano roll."""

from __future__ import annotations

from pathlib import Path

import torch

from datamodules.samples import Samples, finish_plot


class MusicSamples(Samples):
    def __init__(self, dm, context: int):
        super().__init__(dm, context)
        tok = dm.tokenizer
        self.separator, self.eos = tok.vocab["BOS_None"], tok.vocab["EOS_None"]
        self.never = [tok.vocab[s] for s in ("PAD_None", "BOS_None") if s in tok.vocab]  # not inside a piece

    @classmethod
    def check_prompt(cls, args) -> None:
        if args.prompt is None:
            return
        import symusic

        path = Path(args.prompt)
        if not path.is_file():
            raise SystemExit(f"--prompt {path}: no such MIDI file (a music run takes a MIDI file as its prompt)")
        try:
            symusic.Score(str(path))
        except Exception as e:  # symusic raises RuntimeError/ValueError with the parser's words
            raise SystemExit(f"--prompt {path}: not a readable MIDI file ({e})") from None

    def prompt(self, args) -> list[int]:
        if args.prompt is None:
            return [self.separator]
        import symusic

        path = Path(args.prompt)  # readable: check_prompt
        score = symusic.Score(str(path))
        tpq = score.ticks_per_quarter
        ts = score.time_signatures[0] if len(score.time_signatures) else None
        bar = int(round(tpq * 4 * (ts.numerator / ts.denominator if ts else 1.0)))
        score = score.clip(0, bar * args.prompt_bars, clip_end=True)
        ids = self.dm.encode_score(score)
        if not ids:
            raise SystemExit(f"--prompt {path}: the first {args.prompt_bars} bar(s) hold no notes; raise --prompt_bars")
        self.boundary = bar * args.prompt_bars / tpq  # in quarter notes, for the piano roll
        return [self.separator, *ids]

    def allowed(self):
        mask = torch.ones(self.dm.vocab_size, dtype=torch.bool)
        mask[self.never] = False
        return lambda i: mask

    def write(self, ids: list[int], stem: Path) -> list[Path]:
        mid = self.dm.to_midi(ids, str(stem.with_suffix(".mid")))
        score = self.dm.decode(ids)
        from lit_vattn.plotting import plt

        fig, ax = plt().subplots(figsize=(8, 3.2))
        tpq = score.ticks_per_quarter
        for c, track in enumerate(score.tracks):
            for n in track.notes:
                ax.broken_barh([(n.time / tpq, max(n.duration, 1) / tpq)], (n.pitch - 0.4, 0.8), color=f"C{c % 10}")
        if self.boundary is not None:
            ax.axvline(self.boundary, color="grey", ls="--", lw=0.8, label="end of prompt")
            ax.legend(fontsize=7, loc="upper right")
        notes = sum(len(t.notes) for t in score.tracks)
        png = finish_plot(fig, ax, stem, "time (quarter notes)", "MIDI pitch", f"{stem.name}: {notes} notes")
        return [mid, png]
