"""In-context probes that need no download: multi-query associative recall and induction copying.

Synthetic tasks used in architecture research to test whether a network can look a fact up in its
context, not only model a stream. Each window is one example; only the answer positions carry a
target (every other target is -100), so the loss and the accuracy are over answers alone.

``mqar`` -- multi-query associative recall (Arora et al., "Zoology: Measuring and Improving Recall
in Efficient Language Models", 2023, arXiv:2312.04927; HazyResearch/zoology,
``zoology/data/associative_recall.py::multiquery_ar``), generated as there::

    keys   k_1..k_n  distinct, from [1, V/2)          values v_1..v_n  distinct, from [V/2, V)
    input  k_1 v_1 k_2 v_2 ... k_n v_n | queries: k_i at position 2n + 2 g_i, filler elsewhere
    target v_i at the position of query k_i (the model predicts the value after seeing the key)
    g_i    distinct gaps in [0, S), S = (T - 2n) / 2, drawn with p(g) ~ a (g + 1)^(a - 1)

so a = ``power_a`` = 0.01 (Zoology's default) puts most queries close to the pairs and a = 1 spreads
them uniformly. Filler is token 0, or with ``random_non_queries`` (Zoology's default) a uniform
token of the whole vocabulary. Chance accuracy: 1 / (V - V/2).

``copy`` -- induction copying (the repeated random sequence of Olsson et al., "In-context Learning
and Induction Heads", 2022; the copy task of Jelassi et al., "Repeat After Me", 2024)::

    input  SEP a_1 .. a_n  f .. f (g)  SEP a_1 .. a_n  f .. f (to the window's end)
    target a_1 after the second SEP, a_{i+1} after the second a_i (n answers)

with a_1..a_n distinct, from [2, V), the filler f drawn from the ids not in the sequence, and the
gap g uniform in [0, copy_gap] per example. The token after each a_i in the first half is unique,
so an induction head (find the earlier occurrence of the current token, copy its successor)
answers every target; SEP = 1. The lookup distance n + 1 + g changes from example to example, so a
head that attends to a fixed relative position cannot answer (with a fixed gap it could: the copy
would be a positional task). Chance accuracy: 1 / (V - 2).

Examples are a pure function of (split, index, settings): training example g of data seed s comes
from ``numpy.random.default_rng([s, 0, g])`` (a fresh example per sample unless ``train_examples``
fixes a finite set, reshuffled each epoch as Zoology's fixed training set is), and the validation and
test sets do not depend on the data seed (``[EVAL_SEED, 1 or 2, i]``), so every method and seed is
scored on the same examples and tables can pair them. DDP rank r takes training samples
g = k * W + r and a contiguous slice of the evaluation examples; resuming continues the stream from
the consumed count (the checkpoint's).
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.base import StreamDataModule
from datamodules.modality import DataContract, Modality
from datamodules.windows import IGNORE, ResumableSampler

EVAL_SEED = 20231208  # the evaluation sets' seed: fixed, so every run is scored on the same examples
SPLIT_ID = {"train": 0, "val": 1, "test": 2}
SEP = 1  # copy task separator


def gap_probabilities(space: int, power_a: float) -> np.ndarray:
    """Zoology's query-gap law over gaps 0..space-1: p(g) ~ a (g + 1)^(a - 1), normalised."""
    p = power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
    return p / p.sum()


def mqar_example(
    rng: np.random.Generator, T: int, vocab: int, num_kv_pairs: int, p_gap: np.ndarray, random_non_queries: bool
) -> tuple[np.ndarray, np.ndarray]:
    """One MQAR window: input (T,) and target (T,) with -100 except at the n query positions."""
    n, half = num_kv_pairs, vocab // 2
    keys = rng.choice(np.arange(1, half), n, replace=False)
    values = rng.choice(np.arange(half, vocab), n, replace=False)
    gaps = rng.choice(len(p_gap), n, replace=False, p=p_gap)
    seq = np.zeros(T + 1, dtype=np.int64)  # T inputs + the one shifted-out label slot, as in Zoology
    seq[0 : 2 * n : 2], seq[1 : 2 * n : 2] = keys, values
    seq[2 * n + 2 * gaps] = keys  # the queries
    labels = np.full(T + 1, IGNORE, dtype=np.int64)
    labels[2 * n + 2 * gaps + 1] = values
    x, y = seq[:-1], labels[1:]
    if random_non_queries:
        filler = x == 0
        x[filler] = rng.integers(0, vocab, int(filler.sum()))
    return x, y


def copy_example(
    rng: np.random.Generator, T: int, vocab: int, copy_len: int, copy_gap: int
) -> tuple[np.ndarray, np.ndarray]:
    """One induction-copy window: input (T,) and target (T,) with -100 except at the n answers."""
    n = copy_len
    ids = rng.permutation(np.arange(2, vocab))
    seq_tokens, filler_ids = ids[:n], ids[n:]
    seq = filler_ids[rng.integers(0, len(filler_ids), T + 1)]  # (T + 1,) filler everywhere first
    second = n + 1 + int(rng.integers(0, copy_gap + 1))  # position of the second SEP
    seq[0], seq[1 : n + 1] = SEP, seq_tokens
    seq[second], seq[second + 1 : second + 1 + n] = SEP, seq_tokens
    labels = np.full(T + 1, IGNORE, dtype=np.int64)
    labels[second + 1 : second + 1 + n] = seq_tokens  # scored where they are predicted: after SEP and a_1..a_{n-1}
    return seq[:-1], labels[1:]


class ProbeExamples(Dataset):
    """Examples ``ids[k]`` of one split; item k of a training split is sample number g."""

    def __init__(
        self,
        make,
        seed_parts: tuple[int, int],
        ids,
        train_examples: Optional[int] = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.make, self.seed_parts, self.ids = make, seed_parts, ids
        self.train_examples, self.rank, self.world = train_examples, rank, world_size
        self._epoch, self._perm = -1, None

    def __len__(self) -> int:
        return len(self.ids)

    def example_id(self, g: int) -> int:
        """Training: sample g -> the example it shows (itself, or a reshuffled one of a finite set)."""
        if self.train_examples is None:
            return g
        e, i = divmod(g, self.train_examples)
        if e != self._epoch:
            self._perm = np.random.default_rng([self.seed_parts[0], 3, e]).permutation(self.train_examples)
            self._epoch = e
        return int(self._perm[i])

    def __getitem__(self, k: int) -> dict:
        if self.seed_parts[1] == SPLIT_ID["train"]:
            g = k * self.world + self.rank
            index = self.example_id(g)
        else:
            g = index = int(self.ids[k])
        x, y = self.make(np.random.default_rng([*self.seed_parts, index]))
        return {"input": torch.from_numpy(x), "target": torch.from_numpy(y), "index": g}


class ProbeDataModule(StreamDataModule):
    name = "probe"
    TASKS = ("mqar", "copy")

    @classmethod
    def modalities(cls) -> list[Modality]:
        return [cls.modality_for({"task": t}) for t in cls.TASKS]

    @classmethod
    def modality_for(cls, init_args: dict) -> Modality:
        # no comparable unit (answers are tokens); scored by top-1 accuracy on the answer positions
        return Modality(init_args.get("task", "mqar"), unit="token", label="accuracy", probe=True)

    @property
    def modality(self) -> Modality:
        return self.modality_for({"task": self.task})

    def contract(self) -> DataContract:
        return DataContract(self.seq_len, self.batch_size, "token", None, report_accuracy=True)

    def __init__(
        self,
        task: Literal["mqar", "copy"] = "mqar",
        vocab: int = 256,
        num_kv_pairs: int = 8,
        power_a: float = 0.01,
        random_non_queries: bool = True,
        copy_len: int = 16,
        copy_gap: int = 0,
        train_examples: Optional[int] = None,
        val_examples: int = 1000,
        test_examples: int = 2000,
        seq_len: int = 64,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 1234,
    ):
        """
        Args:
            task: "mqar" (multi-query associative recall, Zoology) or "copy" (induction copying of a
                random sequence).
            vocab: Vocabulary size V of the probe (the model's vocabulary). mqar: keys from [1, V/2),
                values from [V/2, V); copy: sequence and filler from [2, V).
            num_kv_pairs: mqar: key-value pairs per example, n (answers per example); 4 n <= seq_len.
            power_a: mqar: exponent a of the query-gap law p(g) ~ (g + 1)^(a - 1); 0.01 (Zoology)
                puts queries near the pairs, 1.0 spreads them uniformly (longer recall distances).
            random_non_queries: mqar: fill non-query positions with uniform random tokens (Zoology's
                default) instead of token 0.
            copy_len: copy: length n of the random sequence that is repeated (answers per example).
            copy_gap: copy: the most filler tokens between the sequence and its repetition; each
                example draws its gap g uniformly from [0, copy_gap] (lookup distance n + 1 + g, so
                no fixed relative position answers); 2 n + 2 + copy_gap <= seq_len + 1.
            train_examples: A fixed training set of this many examples, reshuffled each epoch
                (Zoology trains on a fixed set); None: a fresh example for every sample.
            val_examples: Validation examples (the same for every data seed).
            test_examples: Test examples (the same for every data seed).
            seq_len: Tokens per example window (the model's context length T); mqar needs it even.
            batch_size: Examples per batch on each device.
            num_workers: DataLoader worker processes.
            seed: Seed of the training stream (the evaluation sets do not depend on it).
        """
        super().__init__()
        self.task, self.vocab = task, vocab
        self.num_kv_pairs, self.power_a, self.random_non_queries = num_kv_pairs, power_a, random_non_queries
        self.copy_len, self.copy_gap = copy_len, copy_gap
        self.train_examples, self.val_examples, self.test_examples = train_examples, val_examples, test_examples
        self.seq_len, self.batch_size, self.num_workers, self.seed = seq_len, batch_size, num_workers, seed
        self.consumed = 0  # training samples this rank has taken from the stream
        self.meta = None
        self._check()
        self._p_gap = gap_probabilities((seq_len - 2 * num_kv_pairs) // 2, power_a) if task == "mqar" else None

    def _check(self) -> None:
        """Every impossible setting refused at construction, naming the option that fixes it."""
        T, n = self.seq_len, self.num_kv_pairs
        if self.task not in self.TASKS:
            raise ValueError(f"data.task={self.task!r}: choose 'mqar' or 'copy'")
        if T < 2 or self.batch_size < 1:
            raise ValueError(f"data.seq_len must be >= 2 and data.batch_size >= 1 (got {T}, {self.batch_size})")
        if (
            self.val_examples < 1
            or self.test_examples < 1
            or (self.train_examples is not None and self.train_examples < 1)
        ):
            raise ValueError(
                "data.val_examples, data.test_examples and data.train_examples (or null) must be >= 1 "
                f"(got {self.val_examples}, {self.test_examples}, {self.train_examples})"
            )
        if self.task == "mqar":
            if T % 2:
                raise ValueError(f"data.seq_len={T} must be even for data.task=mqar (queries sit at even offsets)")
            if n < 1 or 4 * n > T:
                raise ValueError(
                    f"data.num_kv_pairs={n} needs 1 <= 4 * num_kv_pairs <= data.seq_len={T} "
                    "(room for the pairs and one query slot per pair); lower num_kv_pairs or raise seq_len"
                )
            if self.vocab // 2 - 1 < n:
                raise ValueError(
                    f"data.vocab={self.vocab} has {self.vocab // 2 - 1} distinct keys, fewer than "
                    f"data.num_kv_pairs={n}; raise data.vocab"
                )
            if not self.power_a > 0:
                raise ValueError(
                    f"data.power_a={self.power_a} must be > 0 (0.01: Zoology's default, 1.0: uniform gaps)"
                )
        else:
            if self.copy_len < 1 or self.copy_gap < 0:
                raise ValueError(
                    f"data.copy_len must be >= 1 and data.copy_gap >= 0 (got {self.copy_len}, {self.copy_gap})"
                )
            need = 2 * self.copy_len + 2 + self.copy_gap
            if need > T + 1:
                raise ValueError(
                    f"data.task=copy needs 2 * copy_len + 2 + copy_gap = {need} <= data.seq_len + 1 = {T + 1}; "
                    "lower data.copy_len or data.copy_gap, or raise data.seq_len"
                )
            if self.vocab - 2 <= self.copy_len:
                raise ValueError(
                    f"data.vocab={self.vocab} leaves {self.vocab - 2} ids for a sequence of data.copy_len="
                    f"{self.copy_len} and its filler; raise data.vocab"
                )

    # --- what the model and the tables read --------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.vocab

    @property
    def answers_per_example(self) -> int:
        return self.num_kv_pairs if self.task == "mqar" else self.copy_len

    @property
    def chance_accuracy(self) -> float:
        """Accuracy of a uniform guess among the ids an answer can be."""
        return 1.0 / (self.vocab - self.vocab // 2) if self.task == "mqar" else 1.0 / (self.vocab - 2)

    def describe(self) -> str:
        """One sentence of what the examples are, for table headers."""
        task = (
            f"multi-query associative recall (Zoology): {self.num_kv_pairs} key-value pairs then their "
            f"{self.num_kv_pairs} queries, gaps p(g) ~ (g + 1)^({self.power_a:g} - 1)"
            if self.task == "mqar"
            else f"induction copying: a sequence of {self.copy_len} distinct ids repeated after 0 to {self.copy_gap} "
            "filler tokens (uniform per example)"
        )
        fresh = (
            "a fresh generated example for every training sample"
            if self.train_examples is None
            else f"a fixed set of {self.train_examples} training examples"
        )
        return (
            f"{task}; vocabulary {self.vocab}, {self.seq_len} tokens per example, {self.answers_per_example} scored "
            f"answers per example; {fresh}; {self.val_examples} validation and {self.test_examples} test examples, "
            "the same for every seed and method"
        )

    def settings(self) -> dict:
        """Everything that decides the examples (the training stream also depends on data.seed)."""
        s = {"task": self.task, "vocab": self.vocab, "seq_len": self.seq_len, "tokenizer": None}
        if self.task == "mqar":
            s.update(num_kv_pairs=self.num_kv_pairs, power_a=self.power_a, random_non_queries=self.random_non_queries)
        else:
            s.update(copy_len=self.copy_len, copy_gap=self.copy_gap)
        return s

    def example(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self.task == "mqar":
            return mqar_example(rng, self.seq_len, self.vocab, self.num_kv_pairs, self._p_gap, self.random_non_queries)
        return copy_example(rng, self.seq_len, self.vocab, self.copy_len, self.copy_gap)

    # --- Lightning ---------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Nothing to prepare: examples are generated as they are drawn."""

    def setup(self, stage: Optional[str] = None) -> None:
        self.check_sampler()

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world
        # a long virtual epoch: the stream is indexed by sample number, the sampler starts at `consumed`
        n = (self.train_examples if self.train_examples is not None else 10**9) // world
        ds = ProbeExamples(self.example, (self.seed, SPLIT_ID["train"]), range(n), self.train_examples, rank, world)
        return self._loader(ds, ResumableSampler(len(ds), lambda: self.consumed))

    def _eval_loader(self, split: str, count: int) -> DataLoader:
        rank, world = self._rank_world
        lo, hi = (count * rank) // world, (count * (rank + 1)) // world
        return self._loader(ProbeExamples(self.example, (EVAL_SEED, SPLIT_ID[split]), range(lo, hi)))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val", self.val_examples)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test", self.test_examples)

    # --- checkpoint --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            **self.stream_state(),
            "seed": self.seed,
            "seq_len": self.seq_len,
            "vocab_size": self.vocab_size,
            "settings": self.settings(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("settings", self.settings()) != self.settings() or state.get("seed", self.seed) != self.seed:
            raise ValueError(
                f"resuming a probe run with other data settings ({state.get('settings')}, seed {state.get('seed')}) than "
                f"the checkpoint's; now {self.settings()}, seed {self.seed}: use the run's own data settings"
            )
        self.restore_stream(state)

    def decode(self, ids) -> str:
        return " ".join(str(int(i)) for i in ids)
