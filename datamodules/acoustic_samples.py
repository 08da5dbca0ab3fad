"""Audio prompts and samples: an audio file's first seconds through the run's own EnCodec; samples
decoded to 24 kHz .wav with a spectrogram. A sample keeps the training layout: position f * n_q + k
holds codebook k's ids only (the end-of-clip token only where a frame would begin)."""

from __future__ import annotations

from pathlib import Path

import torch

from datamodules import codec
from datamodules.samples import Samples, finish_plot


class AcousticSamples(Samples):
    def __init__(self, dm, context: int):
        super().__init__(dm, context)
        self.separator = dm.eos_id

    @classmethod
    def check_prompt(cls, args) -> None:
        if args.prompt is None:
            return
        import soundfile as sf

        path = Path(args.prompt)
        if not path.is_file():
            raise SystemExit(f"--prompt {path}: no such audio file (an acoustic run takes an audio file as its prompt)")
        try:
            sr = sf.info(str(path)).samplerate
        except Exception as e:  # soundfile.LibsndfileError: unknown format, truncated file
            raise SystemExit(f"--prompt {path}: not a readable audio file ({e})") from None
        if sr != codec.SAMPLE_RATE and not args.resample:
            raise SystemExit(
                f"--prompt {path} is sampled at {sr} Hz but the run's codec takes {codec.SAMPLE_RATE} Hz: "
                f"pass --resample to convert it (soxr), or resample the file yourself"
            )

    def prompt(self, args) -> list[int]:
        if args.prompt is None:
            return [self.separator]
        import soundfile as sf

        from datamodules.audio_sources import to_24k_mono

        path = Path(args.prompt)  # readable, at the codec's rate or --resample: check_prompt
        wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
        seconds = args.prompt_seconds
        if seconds is None:  # whole frames filling half the model's context
            seconds = (self.context // 2 // self.dm.n_q) / codec.FRAME_RATE
        wav = to_24k_mono(wav.mean(1), sr)[: int(seconds * codec.SAMPLE_RATE)]
        if len(wav) < codec.SAMPLE_RATE // codec.FRAME_RATE:
            raise SystemExit(
                f"--prompt {path}: shorter than one codec frame ({1000 / codec.FRAME_RATE:.1f} ms); "
                "raise --prompt_seconds or use a longer file"
            )
        codes = codec.encode(self.dm.codec, [wav], torch.device("cpu"), self.dm.bandwidth)[0]  # (n_q, frames)
        self.boundary = codes.shape[1] / codec.FRAME_RATE  # seconds, for the spectrogram
        return [self.separator, *codec.flatten(codes).tolist()]

    def allowed(self):
        n_q, V = self.dm.n_q, self.dm.vocab_size
        masks = []
        for k in range(n_q):
            m = torch.zeros(V, dtype=torch.bool)
            m[k * codec.BINS : (k + 1) * codec.BINS] = True
            m[self.dm.eos_id] = k == 0
            masks.append(m)
        return lambda i: masks[(i - 1) % n_q]

    def write(self, ids: list[int], stem: Path) -> list[Path]:
        ids = [i for i in ids if i != self.separator]
        wav_path = self.dm.to_wav(ids, str(stem.with_suffix(".wav")))
        wav = self.dm.decode(ids)
        from lit_vattn.plotting import plt

        fig, ax = plt().subplots(figsize=(8, 3.2))
        if len(wav) >= 256:
            ax.specgram(wav, NFFT=512, Fs=codec.SAMPLE_RATE, noverlap=384, cmap="magma")
        if self.boundary is not None:
            ax.axvline(self.boundary, color="white", ls="--", lw=0.8)
        seconds = len(wav) / codec.SAMPLE_RATE
        png = finish_plot(fig, ax, stem, "time (s)", "frequency (Hz)", f"{stem.name}: {seconds:.2f} s")
        return [wav_path, png]
