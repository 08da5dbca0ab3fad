"""Token shards on disk: ``train.bin``, ``val.bin``, ``test.bin``, ``units.npy`` and ``meta.json``.

A shard directory is self-describing (copy it to an air-gapped node and it still loads) and is
written atomically: everything goes into a temporary sibling directory that is renamed into place
only when complete, so a crash never leaves a half-written shard that a later run would trust.
The directory name carries a cache key over the source and tokenizer settings; equal settings
reuse the shards, different settings get a new directory.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


def default_cache_dir() -> Path:
    """$LIT_VATTN_CACHE, or ~/.cache/lit_vattn when it is unset or empty (an empty value would
    otherwise mean the current directory)."""
    return Path(os.environ.get("LIT_VATTN_CACHE") or "~/.cache/lit_vattn").expanduser()


def cache_key(settings: dict) -> str:
    """sha256 over the canonical JSON of everything that decides the token stream."""
    blob = json.dumps({"format": FORMAT_VERSION, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


PROGRESS = "progress.json"  # a preparation's last checkpoint, inside its temporary directory


class ShardWriter:
    """Collects token documents per split into a temporary directory; ``commit`` renames it.

    A preparation that calls ``checkpoint`` can be resumed: when one on this host was killed (or
    stopped by Ctrl-C) after a checkpoint, the next writer of the same shards takes its temporary
    directory over, cuts the split files back to the checkpoint and offers its saved state as
    ``resumed``; the others are removed."""

    def __init__(self, final_dir: Path, vocab_size: int):
        self.final_dir = Path(final_dir)
        self.final_dir.parent.mkdir(parents=True, exist_ok=True)
        stale = stale_preparations(self.final_dir)
        kept = max((d for d in stale if (d / PROGRESS).is_file()), key=lambda d: d.stat().st_mtime, default=None)
        for d in stale:
            if d != kept:
                shutil.rmtree(d, ignore_errors=True)
        self.tmp = Path(
            tempfile.mkdtemp(
                prefix=f".{self.final_dir.name}.tmp-{socket.gethostname()}-{os.getpid()}-", dir=self.final_dir.parent
            )
        )
        self.dtype = token_dtype(vocab_size)
        self.vocab_size = vocab_size
        self.tokens = {s: 0 for s in SPLITS}
        self.documents = {s: 0 for s in SPLITS}
        self.resumed: Optional[dict] = None
        if kept is not None:
            os.rename(kept, self.tmp)  # onto the empty directory just made: this process's name
            progress = json.loads((self.tmp / PROGRESS).read_text())
            self.tokens, self.documents = progress["tokens"], progress["documents"]
            for s in SPLITS:  # what was written after the checkpoint is dropped
                os.truncate(self.tmp / f"{s}.bin", self.tokens[s] * self.dtype.itemsize)
            self.resumed = progress["state"]
        self._files = {s: open(self.tmp / f"{s}.bin", "ab") for s in SPLITS}

    def add(self, split: str, ids: Iterable[int] | np.ndarray) -> None:
        arr = np.asarray(ids, dtype=np.int64)
        if arr.size == 0:
            return
        if arr.min() < 0 or arr.max() >= self.vocab_size:
            raise ValueError(f"token id out of range [0, {self.vocab_size}) in split {split!r}")
        self._files[split].write(arr.astype(self.dtype).tobytes())
        self.tokens[split] += arr.size
        self.documents[split] += 1

    def move_documents(self, src: str, moves: dict[str, list[tuple[int, int]]]) -> None:
        """Move documents, given as (token offset, length) ranges of split ``src``, to the end of other
        splits (``{split: ranges}``, each in stream order), rewriting ``src`` without them chunk by chunk
        (memory stays bounded, whatever the split's size)."""
        if not any(moves.values()):
            return
        self._files[src].close()
        path = self.tmp / f"{src}.bin"
        old = np.memmap(path, dtype=self.dtype, mode="r")
        for dst, ranges in moves.items():
            for start, n in ranges:
                self._files[dst].write(np.asarray(old[start : start + n]).tobytes())
                self.tokens[dst] += n
                self.documents[dst] += 1
        cut = sorted(r for ranges in moves.values() for r in ranges)
        with open(self.tmp / f"{src}.bin.rewrite", "wb") as f:
            pos = 0
            for start, n in [*cut, (len(old), 0)]:
                for lo in range(pos, start, 1 << 24):
                    f.write(np.asarray(old[lo : min(start, lo + (1 << 24))]).tobytes())
                pos = start + n
        del old
        os.replace(self.tmp / f"{src}.bin.rewrite", path)
        self._files[src] = open(path, "ab")
        self.tokens[src] -= sum(n for _, n in cut)
        self.documents[src] -= len(cut)

    def checkpoint(self, state: dict) -> None:
        """Make everything added so far durable, with ``state`` (JSON) saying where the caller's source
        stands: a resumed writer gives it back as ``resumed``."""
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
        progress = {"tokens": self.tokens, "documents": self.documents, "state": state}
        (self.tmp / f"{PROGRESS}.tmp").write_text(json.dumps(progress))
        os.replace(self.tmp / f"{PROGRESS}.tmp", self.tmp / PROGRESS)

    def commit(self, meta: dict, units_per_token: np.ndarray) -> Path:
        for f in self._files.values():
            f.close()
        (self.tmp / PROGRESS).unlink(missing_ok=True)
        for s in SPLITS:
            if self.tokens[s] == 0:
                self.abort()
                raise ValueError(
                    f"split {s!r} is empty after tokenization; the source has too few documents "
                    f"(train/val/test documents: {self.documents}). Add data or change the split fractions."
                )
        np.save(self.tmp / "units.npy", np.asarray(units_per_token, dtype=np.float64))
        meta = {
            "format": FORMAT_VERSION,
            "vocab_size": self.vocab_size,
            "dtype": self.dtype.name,
            "splits": {s: {"tokens": self.tokens[s], "documents": self.documents[s]} for s in SPLITS},
            **meta,
        }
        with open(self.tmp / "meta.json", "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        try:
            os.rename(self.tmp, self.final_dir)
        except OSError:  # another process finished the same shards first: keep theirs
            if not (self.final_dir / "meta.json").exists():
                raise
            shutil.rmtree(self.tmp, ignore_errors=True)
        return self.final_dir

    def abort(self) -> None:
        for f in self._files.values():
            f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def stop(self) -> None:
        """Stopped from outside (Ctrl-C): keep a checkpointed preparation for the next writer to resume."""
        if (self.tmp / PROGRESS).is_file():
            for f in self._files.values():
                f.close()
        else:
            self.abort()


def stale_preparations(final_dir: Path) -> list[Path]:
    """The temporary directories of preparations of these shards that stopped: named
    ``.<name>.tmp-<host>-<pid>-*``, made on this host by a process that no longer exists, or by this
    one (the caller holds the preparation lock, so none of its own is still running)."""
    prefix = f".{Path(final_dir).name}.tmp-{socket.gethostname()}-"
    out = []
    for d in Path(final_dir).parent.glob(prefix + "*"):
        try:
            pid = int(d.name[len(prefix) :].split("-", 1)[0])
            if pid != os.getpid():
                os.kill(pid, 0)  # raises if no such process
                continue
        except ProcessLookupError:
            pass
        except (ValueError, PermissionError):
            continue  # not ours to judge
        out.append(d)
    return out


@contextmanager
def preparing(final_dir: Path, log=None) -> Iterator[None]:
    """Hold ``<parent>/.<name>.lock`` while this process prepares these shards. Processes that
    start together on empty shards (``lit-vattn-reproduce --parallel 2`` on a fresh machine, or
    several jobs on one node) would otherwise each tokenize the same source at once: twice the
    time, and for the acoustic source twice ~13 GiB of EnCodec encoding, which got one of them
    OOM-killed on a 24 GiB machine. The others wait here, then find the shards complete. The lock
    is ``filelock``'s (a torch dependency); the kernel frees it if its holder dies."""
    from filelock import FileLock, Timeout

    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(final_dir.parent / f".{final_dir.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if log is not None:
            log.info("another process is preparing %s; waiting for it", final_dir)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def is_complete(shard_dir: Path) -> bool:
    return (Path(shard_dir) / "meta.json").is_file()


def load_meta(shard_dir: Path) -> dict:
    with open(Path(shard_dir) / "meta.json") as f:
        return json.load(f)


def open_split(shard_dir: Path, split: str) -> np.memmap:
    meta = load_meta(shard_dir)
    return np.memmap(Path(shard_dir) / f"{split}.bin", dtype=np.dtype(meta["dtype"]), mode="r")


def digest(shard_dir: Path) -> str:
    """sha256 of the shards' contents (every split's tokens and the units per token): two runs with the
    same digest saw the same data, whatever machine prepared it. Computed once and kept beside the
    shards (``digest.json``, written atomically)."""
    shard_dir = Path(shard_dir)
    kept = shard_dir / "digest.json"
    if kept.is_file():
        return json.loads(kept.read_text())["sha256"]
    h = hashlib.sha256()
    for name in [f"{s}.bin" for s in SPLITS] + ["units.npy"]:
        with open(shard_dir / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
    value = h.hexdigest()
    tmp = shard_dir / f".digest.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"sha256": value}))
    os.replace(tmp, kept)
    return value


TOKEN_FILES = tuple(f"{s}.bin" for s in SPLITS) + ("units.npy", "meta.json", "digest.json")
"""What training and scoring read from a shard directory; the tokenizer files beside them
(``tokenizer.json``, ``codec.pt``) are needed only to encode new input or decode output."""


def copy_tokens(shard_dir: Path, dest: Path) -> bool:
    """Copy a complete shard directory's ``TOKEN_FILES`` to ``dest`` (its digest computed first), all
    or nothing: into a temporary sibling renamed into place, so a reader never sees half of them.
    An existing complete ``dest`` is left as it is (False); True when copied."""
    shard_dir, dest = Path(shard_dir), Path(dest)
    if is_complete(dest):
        return False
    if not is_complete(shard_dir):
        raise FileNotFoundError(f"{shard_dir} holds no complete shards (no meta.json) to copy")
    digest(shard_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-{socket.gethostname()}-{os.getpid()}-", dir=dest.parent))
    try:
        for name in TOKEN_FILES:
            shutil.copy2(shard_dir / name, tmp / name)
        os.rename(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_complete(dest):  # not another process that copied the same shards first
            raise
        return False
    return True


def load_units(shard_dir: Path) -> np.ndarray:
    return np.load(Path(shard_dir) / "units.npy")


def split_of(key: str, val_fraction: float, test_fraction: float) -> str:
    """Deterministic document-level split from a hash of the document's key (never by offset)."""
    u = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") / 2**64
    if u < val_fraction:
        return "val"
    if u < val_fraction + test_fraction:
        return "test"
    return "train"


def split_keys(keys: list[str], val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Split of every key (``split_of``), plus the small-source rule: with at least three keys, an
    empty val or test split takes the train keys that hash lowest (deterministic, a function of the
    keys only), so a folder of tens of files gets one document per split with the default fractions."""
    out = {k: split_of(k, val_fraction, test_fraction) for k in dict.fromkeys(keys)}
    if len(out) >= 3:
        for split in ("val", "test"):
            if split not in out.values():
                train = sorted((k for k, s in out.items() if s == "train"), key=_unit)
                if len(train) > 1:
                    out[train[0]] = split
    return out


class KeySplitter:
    """``split_keys`` for keys that arrive one at a time, in bounded memory: a key's split is ``split_of``
    when it arrives, and ``moves()`` at the end gives what the small-source rule reassigns (the train
    keys that hash lowest, to an empty val or test split), so a stream of any length splits exactly as
    ``split_keys`` splits the whole list. Only the three lowest train keys and three distinct keys
    are kept: all the rule can look at."""

    def __init__(self, val_fraction: float, test_fraction: float):
        self.fractions = (val_fraction, test_fraction)
        self.used = {s: False for s in SPLITS}
        self.some: set[str] = set()  # up to 3 distinct keys: the rule needs at least 3
        self.lowest: list[tuple[float, str]] = []  # the 3 lowest-hashing distinct train keys, sorted

    def assign(self, key: str) -> str:
        split = split_of(key, *self.fractions)
        self.used[split] = True
        if len(self.some) < 3:
            self.some.add(key)
        if split == "train" and (u := (_unit(key), key)) not in self.lowest:
            self.lowest = sorted([*self.lowest, u])[:3]
        return split

    def moves(self) -> dict[str, str]:
        """key -> the split it moves to (at most two keys), as ``split_keys`` decides."""
        out: dict[str, str] = {}
        if len(self.some) >= 3:
            for split in ("val", "test"):
                if not self.used[split]:
                    train = [k for _, k in self.lowest if k not in out]
                    if len(train) > 1:
                        out[train[0]] = split
        return out

    def may_move(self, key: str) -> bool:
        """Whether ``moves()`` could still pick this train key (it is one of the two lowest so far)."""
        return any(k == key for _, k in self.lowest[:2])


def _unit(key: str) -> float:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") / 2**64


def check_splits(counts: dict[str, int], what: str, fix: str) -> None:
    """Raise, before any expensive step, when a split would be empty; ``fix`` names the options."""
    empty = [s for s in SPLITS if not counts.get(s)]
    if empty:
        raise ValueError(
            f"split(s) {', '.join(repr(s) for s in empty)} would be empty: {what} per split {dict(counts)}. Fix: {fix}"
        )


def expand_files(patterns: list[str], what: str, suffixes: Optional[set[str]] = None) -> list[tuple[str, str]]:
    """(path, key) for every file in ``data.files``: files, directories (searched recursively,
    filtered by ``suffixes``) and globs. Hidden files and folders (``.DS_Store``, ``.git/``) are
    not data and are never listed from a directory or a glob. The key is the path relative to the directory (or the
    glob's fixed prefix) it was found under, or the file's name: splits and cache keys depend on it,
    not on where the folder lives. A missing path or an empty result is an error naming ``what``."""
    out: list[tuple[str, str]] = []
    for p in patterns:
        if os.path.isdir(p):
            root = Path(p)
            out += sorted(
                (str(q), q.relative_to(root).as_posix())
                for q in root.rglob("*")
                if q.is_file()
                and not _hidden(q.relative_to(root).as_posix())
                and (suffixes is None or q.suffix.lower() in suffixes)
            )
        elif any(c in p for c in "*?["):
            fixed = p[: min(p.index(c) for c in "*?[" if c in p)]
            root = Path(fixed if fixed.endswith(os.sep) else os.path.dirname(fixed) or ".")
            out += sorted(
                (q, os.path.relpath(q, root))
                for q in glob.glob(p, recursive=True)
                if os.path.isfile(q)
                and not _hidden(os.path.relpath(q, root))
                and (suffixes is None or Path(q).suffix.lower() in suffixes)
            )
        elif os.path.isfile(p):
            out.append((p, os.path.basename(p)))
        else:
            raise FileNotFoundError(
                f"{what} {p!r} does not exist (data.files); give existing files, directories or globs"
            )
    if not out:
        raise FileNotFoundError(f"no {what}s found in data.files={patterns}")
    return out


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") and part not in (".", "..") for part in Path(relative).parts)


def check_cache_dir(path: Path, writable: bool = False) -> None:
    """The shard cache must be a directory (or creatable as one), and writable where shards are
    still to be prepared; otherwise an error naming ``LIT_VATTN_CACHE`` / ``data.cache_dir``
    instead of a traceback about a lock file."""
    fix = "set LIT_VATTN_CACHE (or data.cache_dir) to a writable directory"
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"shard cache {path}: {existing} is a file, not a directory; {fix}")
    if writable and not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"shard cache {path} is not writable ({existing}); {fix}")


def fingerprint(files: list[tuple[str, str]]) -> str:
    """sha256 over the sorted (key, size, mtime) of the files: adding, removing, renaming or editing
    a file changes it, so the shard cache never serves tokens of other inputs."""
    h = hashlib.sha256()
    for path, key in sorted(files, key=lambda f: f[1]):
        st = os.stat(path)
        h.update(f"{key}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def progress(total: Optional[int], what: str):
    """A progress bar on stderr for the one-time preparation (tokenizing, encoding), so a first run
    that spends minutes preparing data says so; a count without a total for a streamed source."""
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="", unit_scale=True, mininterval=2.0, leave=False, dynamic_ncols=True)


def progress_iter(items: list, what: str) -> Iterator:
    with progress(len(items), what) as bar:
        for x in items:
            yield x
            bar.update(1)


def batched(it: Iterable, n: int, size=None, max_size: int = 0) -> Iterator[list]:
    """Lists of ``n`` items, or fewer where their ``size(item)`` reaches ``max_size`` first (so a batch of
    large documents stays bounded in memory)."""
    buf, total = [], 0
    for x in it:
        buf.append(x)
        total += size(x) if size else 0
        if len(buf) == n or (max_size and total >= max_size):
            yield buf
            buf, total = [], 0
    if buf:
        yield buf
