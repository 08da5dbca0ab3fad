"""``lit-vattn-generate``: samples from any checkpoint, for every modality.

    lit-vattn-generate --ckpt_path runs/.../checkpoints/last.ckpt --prompt "And God said" --n 4
    lit-vattn-generate --ckpt_path <music run> --prompt tune.mid --prompt_bars 2 --max_new_tokens 512
    lit-vattn-generate --ckpt_path <acoustic run> --prompt speech.wav --prompt_seconds 1.5
    lit-vattn-generate --ckpt_path <any run>             # unconditional: from the separator token

The run's ``config.yaml`` rebuilds the model and its tokenizer (text BPE, miditok vocabulary, the
run's own EnCodec), so a prompt is encoded exactly as the training data was. Outputs in ``--out``
(default ``<run>/samples``): ``sample<i>.txt`` (text); ``sample<i>.mid`` + a piano-roll
``sample<i>.png`` (music); ``sample<i>.wav`` decoded by the run's codec + a spectrogram
``sample<i>.png`` (audio); each holds the prompt followed by its continuation. ``samples.json``
records the settings, the prompt's length and the generated tokens.

Sampling: temperature, then top-k, then top-p (nucleus) on the next-token distribution, drawn with
one seeded ``torch.Generator``, so the same seed gives the same samples. A sample ends at the
modality's separator (end of document / piece / clip) or after ``--max_new_tokens``. Acoustic
streams are constrained to their layout: position f * n_q + k may only hold codebook k's ids (and
the end-of-clip token at a frame boundary), as in every training window.

Decoding keeps a KV cache (``lit_vattn.arch.base.KVCache``) for every reader, exact (tested against
the full forward for each): every hook but attention is position-wise, so a new position needs only
the cached K/V of the earlier ones. Nothing is recomputed; the cache holds, per layer, the K/V
attention reads (after value residual's or LIMe's mix), a layer's own K/V where SLA borrows them,
and LAS's feature-map K/V. ``--no_cache`` recomputes the whole context at every step (the reference
the cache is tested against). When a sequence reaches the model's context (``max_seq_len``), the
context restarts from its last half (re-encoded once, then cached again), in both modes alike.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from lit_vattn.io import write_json
from lit_vattn.model.memory import KVCache

# --- sampling ---------------------------------------------------------------------------------------


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """(n, V) logits -> (n, V) float32 logits with -inf outside the kept set: temperature, then the
    top-k, then the smallest set whose probability reaches top_p (at least the most likely token)."""
    x = logits.float() / temperature
    if top_k and top_k < x.shape[-1]:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]  # (n, 1)
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        srt, idx = torch.sort(x, dim=-1, descending=True)
        cum = srt.softmax(-1).cumsum(-1)
        drop = cum - srt.softmax(-1) >= top_p  # the mass before this token already reaches top_p
        x = x.masked_fill(drop.scatter(-1, idx, drop), float("-inf"))
    return x


class Context:
    """The positions the model sees: ``seq[start:]``, restarted from its last half when it would
    exceed ``max_seq_len``. Holds the KV cache when decoding with one."""

    def __init__(self, net, use_cache: bool):
        self.net, self.use_cache, self.T = net, use_cache, net.cfg.max_seq_len
        self.start, self.cache = 0, None

    @torch.no_grad()
    def next_logits(self, seq: torch.Tensor) -> torch.Tensor:
        """Logits (n, V) for the token after ``seq`` (n, S)."""
        S = seq.shape[1]
        if S - self.start > self.T:  # the context is full: keep its last half
            self.start, self.cache = S - self.T // 2, None
        if not self.use_cache:
            return self.net(seq[:, self.start :])[:, -1]
        if self.cache is None:  # prefill
            self.cache = KVCache()
            return self.net.decode(seq[:, self.start :], self.cache)[:, -1]
        new = seq[:, self.start + self.cache.pos :]  # (n, t): the positions the cache has not seen
        return self.net.decode(new, self.cache)[:, -1]


@torch.no_grad()
def sample(
    net,
    prompt,
    n: int = 1,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_id: Optional[int] = None,
    allowed: Optional[Callable[[int], Optional[torch.Tensor]]] = None,
    use_cache: bool = True,
    greedy: bool = False,
) -> list[list[int]]:
    """``n`` continuations of ``prompt`` (token ids, at least one) from ``net`` (a ``GPT`` in eval
    mode), each a list of new ids ending with ``stop_id`` when it was drawn. ``prompt`` may also be
    a list of prompts of one length (one continuation each, one batch; ``n`` is then ignored).
    ``allowed(i)`` may return a (V,) bool mask of the ids position i (of the whole sequence) may
    hold; top-k and top-p then choose among them. ``greedy`` takes the most likely id at every step
    (the filters and the seed then do nothing)."""
    if not prompt:
        raise ValueError("sample: the prompt needs at least one token (the separator, for an unconditional sample)")
    if temperature <= 0:
        raise ValueError(f"--temperature {temperature}: must be > 0")
    rows = prompt if isinstance(prompt[0], (list, tuple)) else [prompt] * n
    if len({len(r) for r in rows}) != 1 or not rows[0]:
        raise ValueError("sample: a batch of prompts must hold prompts of one length, at least one token each")
    n, prompt = len(rows), rows[0]
    g = torch.Generator().manual_seed(seed)
    device = next(net.parameters()).device
    seq = torch.tensor(rows, dtype=torch.long, device=device)  # (n, P)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    ends = [None] * n
    ctx = Context(net, use_cache)
    for step in range(max_new_tokens):
        logits = ctx.next_logits(seq)  # (n, V)
        mask = allowed(seq.shape[1]) if allowed is not None else None
        if mask is not None:  # before the filters, so top-k / top-p choose among the allowed ids
            logits = logits.masked_fill(~mask.to(device), float("-inf"))
        logits = filter_logits(logits, temperature, top_k, top_p)
        if greedy:
            nxt = logits.argmax(-1, keepdim=True)  # (n, 1)
        else:
            nxt = torch.multinomial(logits.softmax(-1).cpu(), 1, generator=g).to(device)  # (n, 1)
        seq = torch.cat([seq, nxt], dim=1)
        if stop_id is not None:
            hit = (nxt[:, 0] == stop_id) & ~done
            for i in hit.nonzero().flatten().tolist():
                ends[i] = step + 1
            done |= hit
            if bool(done.all()):
                break
    P = len(prompt)
    return [seq[i, P : P + (ends[i] or seq.shape[1] - P)].tolist() for i in range(n)]


# --- the run's modality -----------------------------------------------------------------------------


def run_modality(ckpt_path: str, config: Optional[str]):
    """The run's declared modality (``datamodules.modality.Modality``), from its saved config, read
    before anything is loaded; refused when it cannot be sampled."""
    import importlib

    import yaml

    from datamodules import modalities
    from lit_vattn.tools.loader import run_config

    data = (yaml.safe_load(run_config(ckpt_path, config).read_text()) or {}).get("data") or {}
    module, _, name = str(data.get("class_path", "")).rpartition(".")
    try:
        mod = getattr(importlib.import_module(module), name).modality_for(data.get("init_args") or {})
    except (ImportError, AttributeError, ValueError, TypeError):
        mod = None
    if mod is None or mod.samples is None:
        known = ", ".join(m.name for m in modalities().values() if m.samples)
        raise SystemExit(
            f"lit-vattn-generate samples {known} runs; this run's data is {mod.name if mod else name or 'unknown'}"
            + (" (an in-context probe is scored on its answers with `lit-vattn test`)" if mod and mod.probe else "")
        )
    return mod


# --- command ----------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt_path", required=True, help="a checkpoint of a lit-vattn run")
    p.add_argument("--config", default=None, help="the run's YAML; default <run>/config.yaml")
    p.add_argument(
        "--prompt",
        default=None,
        help="text (or a .txt file), a MIDI file, or an audio file, by the run's "
        "modality; default none: unconditional samples",
    )
    p.add_argument("--prompt_bars", type=int, default=2, help="music: the prompt is the MIDI file's first N bars")
    p.add_argument(
        "--prompt_seconds",
        type=float,
        default=None,
        help="audio: the prompt is the file's first N seconds; "
        "default the whole frames that fill half the model's context",
    )
    p.add_argument(
        "--resample", action="store_true", help="audio: resample a prompt at another rate to the codec's 24 kHz"
    )
    p.add_argument("--n", type=int, default=4, help="samples drawn (one batch)")
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=0, help="keep the k most likely tokens; 0 = all")
    p.add_argument(
        "--top_p", type=float, default=1.0, help="nucleus: the smallest set reaching this probability; 1 = all"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_cache", action="store_true", help="recompute the whole context at every step (no KV cache)")
    p.add_argument("--out", default=None, help="output folder; default <run>/samples")
    return p


def check(args) -> None:
    """Bad settings, refused before the checkpoint is loaded."""
    for name, ok, rule in (
        ("n", args.n >= 1, ">= 1"),
        ("max_new_tokens", args.max_new_tokens >= 1, ">= 1"),
        ("temperature", args.temperature > 0, "> 0"),
        ("top_k", args.top_k >= 0, ">= 0 (0 = off)"),
        ("top_p", 0 < args.top_p <= 1, "in (0, 1]"),
        ("prompt_bars", args.prompt_bars >= 1, ">= 1"),
        ("prompt_seconds", args.prompt_seconds is None or args.prompt_seconds > 0, "> 0"),
    ):
        if not ok:
            raise SystemExit(f"--{name} {getattr(args, name)}: must be {rule}")


def main(argv: Optional[list[str]] = None) -> list[Path]:
    args = parser().parse_args(argv)
    check(args)
    modality = run_modality(args.ckpt_path, args.config)
    modality.samples.check_prompt(args)
    from lit_vattn.tools.loader import load

    model, dm = load(args.ckpt_path, args.config)
    net = model.net.eval()
    mod = modality.samples(dm, net.cfg.max_seq_len)
    prompt = mod.prompt(args)
    if len(prompt) > net.cfg.max_seq_len:
        raise SystemExit(
            f"--prompt: {len(prompt)} tokens, longer than the model's context of {net.cfg.max_seq_len} "
            "(config.max_seq_len); shorten it (fewer characters, --prompt_bars or --prompt_seconds)"
        )
    out = Path(args.out) if args.out else Path(args.ckpt_path).parent.parent / "samples"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    samples = sample(
        net,
        prompt,
        args.n,
        args.max_new_tokens,
        args.temperature,
        args.top_k,
        args.top_p,
        args.seed,
        stop_id=mod.separator,
        allowed=mod.allowed(),
        use_cache=not args.no_cache,
    )
    seconds = time.perf_counter() - t0
    written = []
    for i, s in enumerate(samples):
        written += mod.write(prompt + s, out / f"sample{i}")
    record = {
        "ckpt_path": str(args.ckpt_path),
        "modality": modality.name,
        "settings": vars(args),
        "prompt_tokens": len(prompt),
        "new_tokens": [len(s) for s in samples],
        "tokens_per_sec": sum(map(len, samples)) / seconds,
        "kv_cache": not args.no_cache,
        "samples": samples,
    }
    write_json(out / "samples.json", record, indent=1)
    written.append(out / "samples.json")
    for w in written:
        print(w)
    return written


def console() -> None:
    main()


if __name__ == "__main__":
    console()
