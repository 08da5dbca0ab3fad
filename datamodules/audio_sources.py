"""Audio clips at 24 kHz mono: synthesised speech (embedded default), audio files, HF datasets,
and music rendered from MIDI.

- Speech: libespeak-ng and its voice data ship inside the ``espeakng-loader`` wheel (GPL-3); it is
  driven through ctypes in synchronous mode (~300x real time on one core, corpus reading and
  resampling included: results/prepare-speed-cpu.md), reading the embedded
  text corpus with seeded voices, rates and pitches. A synthetic voice: fine for the machinery and
  for relative comparisons, not for claims about human speech. libespeak-ng is not bit-for-bit
  deterministic (a few samples of jitter per utterance, even re-initialised), so the cached
  shards, with the codec checksum in meta.json, define the dataset; regenerating gives a close twin.
- Files: anything libsndfile reads (wav, flac, ogg), mixed to mono and resampled with soxr.
- HF audio datasets (e.g. LibriSpeech) with ``Audio(decode=False)`` and soundfile, since datasets'
  own decoding needs torchcodec.
- Music: MIDI rendered with symusic's synthesizer and the General MIDI soundfont that ships inside
  ``pretty_midi`` (TimGM6mb.sf2, GPL-2); deterministic, ~9,000x real time on one core (symusic
  0.5.9; 0.6.0's ``Synthesizer.render`` cannot return its audio, hence the pin in pyproject.toml).
Clips come as (split_key, name, waveform).
"""

from __future__ import annotations

import ctypes
import importlib.util
import io
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from datamodules.codec import SAMPLE_RATE
from datamodules.shards import expand_files

Clip = tuple[str, str, np.ndarray]
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".mp3"}
VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb-x-rp+m3", "en-us+m5", "en-gb+f4"]


def to_24k_mono(x: np.ndarray, sr: int) -> np.ndarray:
    import soxr

    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if sr != SAMPLE_RATE:
        x = soxr.resample(x, sr, SAMPLE_RATE)
    return np.ascontiguousarray(x, dtype=np.float32)


class Espeak:
    """One process-wide libespeak-ng in synchronous mode, collecting samples through a callback."""

    _lib = None
    _rate = 22050
    _chunks: list = []

    @classmethod
    def _init(cls):
        if cls._lib is not None:
            return
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        rate = lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0)  # 2 = synchronous
        if rate <= 0:
            raise RuntimeError("libespeak-ng failed to initialise (espeakng-loader data path)")
        cb_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

        def on_audio(wav, n, events):
            if n > 0:
                cls._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        cls._callback = cb_type(on_audio)  # keep a reference: ctypes must not free it
        lib.espeak_SetSynthCallback(cls._callback)
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        cls._lib, cls._rate = lib, rate

    @classmethod
    def speak(cls, text: str, voice: str = "en-us", rate: int = 170, pitch: int = 50) -> np.ndarray:
        """float32 waveform at 24 kHz."""
        cls._init()
        cls._chunks = []
        cls._lib.espeak_SetVoiceByName(voice.encode())
        cls._lib.espeak_SetParameter(1, int(rate), 0)  # espeakRATE, words per minute
        cls._lib.espeak_SetParameter(3, int(pitch), 0)  # espeakPITCH, 0-100
        b = text.encode("utf-8") + b"\0"
        cls._lib.espeak_Synth(b, len(b), 0, 1, 0, 1, None, None)  # POS_CHARACTER, espeakCHARS_UTF8
        cls._lib.espeak_Synchronize()
        pcm = np.concatenate(cls._chunks) if cls._chunks else np.zeros(0, np.int16)
        return to_24k_mono(pcm.astype(np.float32) / 32768.0, cls._rate)


def speech_clips(seconds: float, seed: int = 0, max_chars: int = 300) -> Iterator[Clip]:
    """Utterances of the embedded text corpus (KJV verses and GCIDE definitions, interleaved)
    read with seeded voices, rates and pitches, until ``seconds`` of audio."""
    from datamodules.text_sources import gcide_documents, kjv_documents

    rng = np.random.default_rng(seed)

    def sentences():
        kjv, gcide = kjv_documents(), gcide_documents()
        while True:
            for it in (kjv, gcide):
                key, text = next(it)
                text = text.split("\n", 1)[-1].strip()
                if len(text) > max_chars:  # an utterance: cut at the last sentence or word end
                    cut = text[:max_chars]
                    text = cut[: max(cut.rfind(". "), cut.rfind(" ")) + 1] or cut
                if len(text) > 20:
                    yield key, text

    total = 0.0
    for key, text in sentences():
        voice = VOICES[int(rng.integers(len(VOICES)))]
        wav = Espeak.speak(text, voice, rate=int(rng.integers(140, 200)), pitch=int(rng.integers(35, 66)))
        total += len(wav) / SAMPLE_RATE
        yield key, f"{key} [{voice}]", wav
        if total >= seconds:
            return


def read_audio(path_or_bytes) -> np.ndarray:
    import soundfile as sf

    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else path_or_bytes
    x, sr = sf.read(src, dtype="float32", always_2d=True)
    return to_24k_mono(x, sr)


def select_files(
    patterns: list[str], seconds: Optional[float], max_clips: Optional[int], seed: int, skipped: list
) -> list[tuple[str, str]]:
    """(path, key) of the audio files to use, chosen before any is decoded: a seeded shuffle of the
    folder (an even selection over it), cut where the files' header durations reach ``seconds``
    or the count reaches ``max_clips`` (None = no limit). Files whose header cannot be read are
    skipped and reported."""
    import soundfile as sf

    files = expand_files(patterns, "audio file", AUDIO_SUFFIXES)
    order = np.random.default_rng(seed).permutation(len(files))
    out, total = [], 0.0
    for i in order:
        if (max_clips is not None and len(out) >= max_clips) or (seconds is not None and total >= seconds):
            break
        path, key = files[i]
        try:
            info = sf.info(path)
            total += info.frames / info.samplerate
        except Exception as e:
            skipped.append((path, f"unreadable: {type(e).__name__}: {e}"))
            continue
        out.append((path, key))
    return out


def file_clips(selected: list[tuple[str, str]], skipped: list) -> Iterator[Clip]:
    """Decode the selected files (``select_files``); the key is the path relative to its folder."""
    for path, key in selected:
        try:
            wav = read_audio(path)
        except Exception as e:
            skipped.append((path, f"unreadable: {type(e).__name__}: {e}"))
            continue
        yield key, path, wav


def hf_clips(
    dataset: str, config: Optional[str], split: str, column: str, max_clips: Optional[int], skipped: list
) -> Iterator[Clip]:
    import datasets

    try:
        ds = datasets.load_dataset(dataset, config, split=split, streaming=True)
    except (ConnectionError, FileNotFoundError, OSError, ValueError) as e:
        raise ValueError(
            f"could not load the HF audio dataset {dataset!r} (split {split!r}): {type(e).__name__}: {e}"
        ) from e
    ds = ds.cast_column(column, datasets.Audio(decode=False))
    for i, row in enumerate(ds):
        if max_clips is not None and i >= max_clips:
            return
        a = row[column]
        name = a.get("path") or f"{dataset}/{i}"
        try:
            wav = read_audio(a["bytes"] if a.get("bytes") else a["path"])
        except Exception as e:
            skipped.append((name, f"unreadable: {type(e).__name__}: {e}"))
            continue
        yield f"{dataset}/{row.get('speaker_id', i)}/{i}", name, wav


def soundfont() -> str:
    spec = importlib.util.find_spec("pretty_midi")
    sf2 = Path(spec.origin).parent / "TimGM6mb.sf2" if spec and spec.origin else None
    if sf2 is None or not sf2.is_file():
        raise FileNotFoundError("the General MIDI soundfont ships with pretty_midi: pip install -e '.[audio]'")
    return str(sf2)


def rendered_music_clips(
    seconds: float, max_clip_seconds: float = 60.0, skipped: Optional[list] = None
) -> Iterator[Clip]:
    """Pieces of the embedded symbolic corpus rendered to audio (symusic's synthesizer, one loaded
    font), mixed to mono and cut at ``max_clip_seconds``."""
    import symusic

    from datamodules.music_sources import abc_pieces

    synth = symusic.Synthesizer(soundfont(), SAMPLE_RATE)
    total = 0.0
    for key, name, score in abc_pieces(skipped=skipped):
        stereo = synth.render(score, stereo=True)  # (2, samples)
        wav = np.ascontiguousarray(stereo.mean(axis=0)[: int(max_clip_seconds * SAMPLE_RATE)], dtype=np.float32)
        total += len(wav) / SAMPLE_RATE
        yield key, name, wav
        if total >= seconds:
            return
