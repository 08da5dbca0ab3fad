"""Symbolic-music pieces as ``symusic.Score``: the embedded corpus and users' MIDI files.

Embedded default (shared reference data-sources.md section 2): the ABC tunes bundled with music21
(essenFolksong, O'Neill's, Ryan's Mammoth, ...), converted by the ``abc2midi`` binary that ships in
the symusic wheel. A multi-tune .abc file is split on ``X:`` lines (``Score.from_abc`` silently
keeps only the first tune of a file) and abc2midi's warnings, written to the process's own file
descriptors, are sent to /dev/null. Option ``full`` adds the ~2,000 kern/MusicXML scores through
music21 (minutes per pathological file, so each runs under a timeout in a worker pool, once, and the
MIDI bytes are cached). Pieces come as (split_key, name, score): the split key groups adjacent tunes
of one file so near-duplicate variants do not leak across splits.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
from pathlib import Path
from typing import Iterator, Optional

from datamodules.shards import expand_files
from lit_vattn.io import write_bytes

log = logging.getLogger(__name__)
Piece = tuple[str, str, "object"]
MIDI_SUFFIXES = {".mid", ".midi"}


def music21_corpus() -> Path:
    spec = importlib.util.find_spec("music21")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("music21 is not installed: pip install music21 (its corpus is the embedded default)")
    return Path(spec.origin).parent / "corpus"


@contextlib.contextmanager
def silenced_fds():
    """abc2midi writes to fds 1/2 directly; Python-level redirection does not catch it."""
    null = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(1), os.dup(2)
    os.dup2(null, 1)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def abc_tunes(corpus: Optional[Path] = None) -> Iterator[tuple[str, str, str]]:
    """(split_key, name, abc text) for every tune of every .abc file, file header kept."""
    root = corpus or music21_corpus()
    for fp in sorted(root.rglob("*.abc")):
        rel = fp.relative_to(root).as_posix()
        txt = fp.read_text(encoding="latin-1")
        parts = re.split(r"(?m)^(?=X:)", txt)
        header = "" if parts[0].lstrip().startswith("X:") else parts[0]
        for i, tune in enumerate(p for p in parts if p.lstrip().startswith("X:")):
            yield f"{rel}#{i // 25}", f"{rel}#{i}", header + tune


def abc_pieces(max_pieces: Optional[int] = None, skipped: Optional[list] = None) -> Iterator[Piece]:
    """Tunes converted by abc2midi; with ``max_pieces``, an evenly spaced subset of the whole
    corpus (every k-th tune), so a small sample still spans every collection."""
    import symusic

    tunes = abc_tunes()
    if max_pieces is not None:
        all_tunes = list(tunes)
        step = max(1, len(all_tunes) // max(1, max_pieces))
        tunes = iter(all_tunes[::step][: max_pieces + 16])  # a few spares for tunes that fail
    n = 0
    with silenced_fds():
        for key, name, text in tunes:
            if max_pieces is not None and n >= max_pieces:
                return
            try:
                score = symusic.Score.from_abc(text)
            except Exception as e:  # 2 of 12,978 tunes fail (essenFolksong/han2.abc)
                if skipped is not None:
                    skipped.append((name, f"{type(e).__name__}: {e}"))
                continue
            n += 1
            yield key, name, score


def _kern_to_midi(path: str) -> Optional[bytes]:
    from music21 import converter
    from music21.midi.translate import streamToMidiFile

    return streamToMidiFile(converter.parse(path)).writestr()


def _kern_worker(args: tuple[str, int]) -> tuple[str, Optional[bytes], str]:
    import signal

    path, timeout = args

    def alarm(*_):
        raise TimeoutError(f"conversion took more than {timeout} s")

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(timeout)
    try:
        return path, _kern_to_midi(path), ""
    except Exception as e:
        return path, None, f"{type(e).__name__}: {e}"
    finally:
        signal.alarm(0)


def score_files(max_files: Optional[int] = None) -> list[str]:
    """The kern/MusicXML scores of music21's corpus; with ``max_files``, an evenly spaced subset."""
    root = music21_corpus()
    files = sorted(str(p) for ext in ("*.krn", "*.mxl", "*.xml", "*.musicxml") for p in root.rglob(ext))
    if max_files is not None:
        files = files[:: max(1, len(files) // max(1, max_files))][:max_files]
    return files


def score_pieces(
    cache: Path, timeout: int = 120, workers: int = 2, skipped: Optional[list] = None, max_files: Optional[int] = None
) -> Iterator[Piece]:
    """The kern/MusicXML part of music21's corpus, converted once into ``cache`` as MIDI files."""
    import multiprocessing as mp

    import symusic

    root = music21_corpus()
    files = score_files(max_files)
    cache.mkdir(parents=True, exist_ok=True)
    todo = [
        f
        for f in files
        if not (cache / (Path(f).relative_to(root).as_posix().replace("/", "__") + ".mid")).exists()
        and not (cache / (Path(f).relative_to(root).as_posix().replace("/", "__") + ".failed")).exists()
    ]
    if todo:
        log.info("converting %d kern/MusicXML scores with music21 (once; cached in %s)", len(todo), cache)
        os.environ.setdefault("MUSIC21_CACHE", str(cache / "music21-pickles"))
        with mp.get_context("spawn").Pool(workers, maxtasksperchild=20) as pool:
            for path, data, err in pool.imap_unordered(_kern_worker, [(f, timeout) for f in todo]):
                out = cache / (Path(path).relative_to(root).as_posix().replace("/", "__"))
                if data is None:
                    out.with_name(out.name + ".failed").write_text(err)
                else:
                    write_bytes(out.with_name(out.name + ".mid"), data)
    for f in files:
        rel = Path(f).relative_to(root).as_posix()
        out = cache / (rel.replace("/", "__") + ".mid")
        if not out.exists():
            if skipped is not None:
                skipped.append((rel, (cache / (rel.replace("/", "__") + ".failed")).read_text()[:200]))
            continue
        yield rel, rel, symusic.Score(str(out))


def file_pieces(patterns: list[str], skipped: Optional[list] = None) -> Iterator[Piece]:
    """MIDI files (e.g. a MAESTRO folder); unreadable files are skipped and reported."""
    import symusic

    for path, key in expand_files(patterns, "MIDI file", MIDI_SUFFIXES):
        try:
            score = symusic.Score(path)
        except Exception as e:
            if skipped is not None:
                skipped.append((path, f"{type(e).__name__}: {e}"))
            continue
        yield key, path, score  # key: the path relative to its folder, so splits follow the file
