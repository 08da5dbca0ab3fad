"""lm-evaluation-harness adapter: any text checkpoint of the suite as an ``lm_eval`` model.

    lit-vattn-lm-eval --model lit-vattn --model_args ckpt_path=runs/text-va/checkpoints/last.ckpt \\
        --tasks hellaswag,lambada_openai,arc_easy,piqa --batch_size 16 --device cuda
    # from Python: import lit_vattn.tools.lm_eval_adapter, then lm_eval.simple_evaluate(model="lit-vattn", ...)

``lm_eval`` discovers models only through its own registry, so ``lit-vattn-lm-eval`` is the harness's
own command line (every flag of ``lm_eval``) with this module imported first, which registers
``lit-vattn``. ``--model_args``: ``ckpt_path`` (required), ``config`` (the run's YAML; default
``<run>/config.yaml``), ``max_length`` (default the model's context); ``--batch_size`` and
``--device`` as usual. The run's own tokenizer (GPT-2 BPE or the run's trained BPE) encodes the
requests; tasks download their data, so standard tasks need internet or a prepared HF cache.

The three request types, as the harness defines them:
- ``loglikelihood(context, continuation)``: the summed log-probability of the continuation's tokens
  after the context, and whether each was the argmax (greedy). Context and continuation are
  encoded as one string and the continuation is the tokens after the context's own encoding (a
  trailing space of the context moves to the continuation, as the harness's HF model does); an
  empty context is the end-of-text token; inputs longer than ``max_length`` keep their last tokens.
  Requests are sorted by length and scored in right-padded batches (causal: padding after a
  sequence cannot change its scores).
- ``loglikelihood_rolling(text)``: the text's summed log-probability over disjoint windows of
  ``max_length`` (the harness's rolling windows; the first token conditions on end-of-text).
- ``generate_until(context, gen_kwargs)``: greedy (or sampled, with ``do_sample`` and
  ``temperature``) continuation through ``lit_vattn.tools.generate.sample`` with the KV cache, cut at the
  first ``until`` string, at most ``max_gen_toks`` tokens; requests whose contexts have the same
  token length and settings are generated in one batch.
"""

from __future__ import annotations

import sys
from typing import Optional

import torch
import torch.nn.functional as F

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as e:  # the harness is an optional extra
    raise ImportError('lit_vattn.tools.lm_eval_adapter needs lm-evaluation-harness: pip install -e ".[eval]"') from e


@register_model("lit-vattn")
class LitVattnLM(LM):
    def __init__(
        self,
        ckpt_path: str,
        config: Optional[str] = None,
        batch_size=8,
        device: Optional[str] = None,
        max_length: Optional[int] = None,
        **_ignored,
    ):
        super().__init__()
        from lit_vattn.tools.loader import load

        model, dm = load(ckpt_path, config)
        if not hasattr(dm, "tokenizer") or not hasattr(dm.tokenizer, "encode_batch"):
            raise ValueError(
                f"--model_args ckpt_path={ckpt_path}: lm-eval scores text; this run's data is {type(dm).__name__}"
            )
        self.device_ = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = model.net.to(self.device_).eval()
        self.tok = dm.tokenizer
        self.eot = self.tok.eot_id
        self.max_length = int(max_length or self.net.cfg.max_seq_len)
        if self.max_length > self.net.cfg.max_seq_len:
            raise ValueError(
                f"--model_args max_length={self.max_length} exceeds the model's context {self.net.cfg.max_seq_len}"
            )
        self.batch_size = 8 if batch_size in (None, "auto") or str(batch_size).startswith("auto") else int(batch_size)

    # --- helpers ------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tok.encode_batch([text])[0] if text else []

    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())
        if spaces:  # the harness's convention: trailing context spaces belong to the continuation
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        ctx = self.encode(context)
        return ctx or [self.eot], self.encode(context + continuation)[len(ctx) :]

    @torch.no_grad()
    def _score(self, items: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(context ids, continuation ids) -> (summed log-prob of the continuation, all greedy)."""
        out: list[Optional[tuple[float, bool]]] = [None] * len(items)
        order = sorted(range(len(items)), key=lambda i: -len(items[i][0]) - len(items[i][1]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            rows, spans = [], []
            for i in idx:
                ctx, cont = items[i]
                if not cont:
                    out[i] = (0.0, True)
                    continue
                if len(cont) > self.max_length:
                    raise ValueError(
                        f"a continuation of {len(cont)} tokens is longer than the model's context of "
                        f"{self.max_length} (--model_args max_length); it cannot be scored in one window"
                    )
                seq = (ctx + cont)[-(self.max_length + 1) :]
                inp = seq[:-1]
                rows.append(inp)
                spans.append((i, len(inp) - len(cont), torch.tensor(cont)))
            if not rows:
                continue
            L = max(map(len, rows))
            x = torch.tensor(
                [r + [self.eot] * (L - len(r)) for r in rows], device=self.device_
            )  # (B, L), right padding
            logp = F.log_softmax(self.net(x).float(), dim=-1).cpu()  # (B, L, V)
            for b, (i, at, cont) in enumerate(spans):
                lp = logp[b, at : at + len(cont)]  # (n_cont, V)
                out[i] = (float(lp.gather(1, cont[:, None]).sum()), bool((lp.argmax(-1) == cont).all()))
        return out  # type: ignore[return-value]

    # --- the harness's interface --------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self._score([self._pair(*r.args) for r in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        results = []
        for r in requests:
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=self.encode(r.args[0]), prefix_token=self.eot, max_seq_len=self.max_length, context_len=1
                )
            ]
            results.append(sum(lp for lp, _ in self._score(windows)))
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from lit_vattn.tools.generate import sample

        out: list[Optional[str]] = [None] * len(requests)
        groups: dict = {}
        for i, r in enumerate(requests):
            context, kw = r.args
            kw = dict(kw or {})
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            ids = (self.encode(context) or [self.eot])[-(self.max_length - 1) :]
            key = (
                len(ids),
                tuple(until),
                int(kw.get("max_gen_toks", 256)),
                bool(kw.get("do_sample", False)),
                float(kw.get("temperature", 0.0) or 0.0),
            )
            groups.setdefault(key, []).append((i, ids))
        for (_, until, max_new, do_sample, temperature), items in groups.items():
            greedy = not do_sample or temperature == 0.0
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                new = sample(
                    self.net,
                    [ids for _, ids in chunk],
                    max_new_tokens=max_new,
                    temperature=temperature or 1.0,
                    stop_id=self.eot,
                    greedy=greedy,
                )  # one batch: the prompts have one length
                for (i, _), toks in zip(chunk, new):
                    text = self.tok.decode([t for t in toks if t != self.eot])
                    for stop in until:
                        text = text.split(stop)[0] if stop else text
                    out[i] = text
        return out  # type: ignore[return-value]


def main() -> None:
    """``lit-vattn-lm-eval``: the harness's command line with the ``lit-vattn`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    sys.exit(cli_evaluate())


if __name__ == "__main__":
    main()
