"""The LightningModule: train/val/test steps, metrics, optimizer and schedule around one GPT.

Lightning owns the loop, precision, strategies and checkpointing; this file owns what is specific
to language modelling across depth.
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Union

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from lit_vattn.arch.base import Arch
from lit_vattn.model.config import GPTConfig
from lit_vattn.model.decoder import GPT
from lit_vattn.train.metrics import NLLMetrics


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite: the run stops, writes no checkpoint of that state,
    and exits non-zero."""


class LanguageModel(pl.LightningModule):
    def __init__(
        self,
        config: GPTConfig = GPTConfig(),
        arch: Union[None, Arch, list[Arch]] = None,
        vocab_size: int = 50257,
        lr: float = 1e-3,
        min_lr_ratio: float = 0.1,
        warmup_steps: int = 100,
        schedule: Literal["cosine", "wsd", "constant"] = "cosine",
        decay_fraction: float = 0.2,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        mix_lr_mult: float = 1.0,
        compile: bool = False,
    ):
        """
        Args:
            config: Decoder shape (layers, heads, width, ...).
            arch: The depth-memory reader (lit_vattn.arch.*, with its switches; default the vanilla
                decoder), or a list of readers to combine when they override different hooks.
            vocab_size: Vocabulary size; linked from the DataModule by the CLI.
            lr: Peak AdamW learning rate.
            min_lr_ratio: Final learning rate as a fraction of lr (cosine and wsd).
            warmup_steps: Linear warmup steps.
            schedule: cosine decay to min_lr_ratio; wsd = warmup-stable-decay (linear decay over the
                last decay_fraction of training); constant after warmup.
            decay_fraction: Fraction of steps spent decaying in the wsd schedule.
            weight_decay: AdamW decay on matrices; norms, embeddings, scalars and depth-mixing
                weights get none.
            betas: AdamW betas.
            mix_lr_mult: Learning-rate multiplier for depth-mixing weights and routers.
            compile: torch.compile the network (in place; checkpoints keep the plain keys).
        """
        super().__init__()
        # under LightningCLI these are the config dicts, so `test --ckpt_path` rebuilds this model
        self.save_hyperparameters()
        self.config = config
        self.net = GPT(self.config, vocab_size, arch)
        self.val_metrics, self.test_metrics = NLLMetrics(), NLLMetrics()
        self.units_per_token: Optional[Tensor] = None
        self.unit = "token"
        self.report_accuracy = False  # set from the DataModule (the in-context probes score top-1 accuracy)

    # --- setup -------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Under ``lit_vattn.train.fsdp.FSDP2Strategy`` (which sets a device mesh): shard the network."""
        if getattr(self, "_device_mesh", None) is not None and not getattr(self, "_sharded", False):
            from lit_vattn.train.fsdp import shard

            shard(self.net, self._device_mesh)
            self._sharded = True

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None:
            if not callable(getattr(dm, "contract", None)):
                raise TypeError(
                    f"data: {type(dm).__name__} declares no contract(); subclass datamodules.base.StreamDataModule "
                    "or define contract() returning a datamodules.modality.DataContract"
                )
            c = dm.contract()
            if c.seq_len > self.config.max_seq_len:
                raise ValueError(f"data.seq_len={c.seq_len} exceeds model config.max_seq_len={self.config.max_seq_len}")
            if c.units_per_token is not None:
                self.units_per_token = c.units_per_token.float()
                self.unit = c.unit
            self.report_accuracy = c.report_accuracy
            # ThroughputMonitor reads this for FLOPs/s and MFU
            self.flops_per_batch = self.net.flops_per_token(c.seq_len) * c.seq_len * c.batch_size
        if self.hparams.compile and not getattr(self, "_compiled", False):
            self.net.compile()
            self._compiled = True

    def forward(self, idx: Tensor) -> Tensor:
        return self.net(idx)

    # --- steps -------------------------------------------------------------------------------------
    def _nll_sum(self, batch: dict) -> tuple[Tensor, Tensor]:
        tgt = batch["target"]
        nll = self.net(batch["input"], targets=tgt)  # summed nats, float32, inside the (compiled) forward
        return nll, (tgt >= 0).sum()

    def eval_sums(self, batch: dict, per_sequence: bool = False) -> dict[str, Tensor]:
        """An evaluation batch's summed NLL ("nll"; with per_sequence also each row's, "rows") and,
        when the data reports accuracy, the targets ranked first ("correct", and per row
        "correct_rows"). Accuracy needs the logits, so that path computes the loss from them here
        (the same float32 cross-entropy as the fused path of ``GPT.forward``)."""
        tgt = batch["target"]
        if not self.report_accuracy:
            if not per_sequence:
                return {"nll": self.net(batch["input"], targets=tgt)}
            nll, rows = self.net(batch["input"], targets=tgt, per_sequence=True)
            return {"nll": nll, "rows": rows}
        logits = self.net(batch["input"]).float()  # (B, T, V)
        per_token = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=-100, reduction="none").view(
            tgt.shape
        )
        hit = (logits.argmax(-1) == tgt) & (tgt >= 0)  # (B, T); ties go to the lowest id, as argmax does
        return {"nll": per_token.sum(), "rows": per_token.sum(1), "correct": hit.sum(), "correct_rows": hit.sum(1)}

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        nll, n = self._nll_sum(batch)
        loss = nll / n.clamp_min(1)
        self._watch_finite(loss)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    # --- divergence --------------------------------------------------------------------------------
    def _watch_finite(self, loss: Tensor) -> None:
        """Stop at the first non-finite training loss. On a CPU it is checked at once; on a GPU the
        first bad step is kept on the device (no synchronisation per step) and checked on every
        logging step, before every checkpoint and at the end of training, so at most
        ``log_every_n_steps`` steps run past it and none is saved or scored."""
        bad = ~torch.isfinite(loss.detach())
        if loss.device.type != "cuda":
            if bad:
                self._diverged(self.global_step, float(loss))
            return
        first = getattr(self, "_first_bad_step", None)
        if first is None:
            first = self._first_bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        self._first_bad_step = torch.where(bad & (first < 0), torch.full_like(first, self.global_step), first)
        t = self._trainer
        if t is not None and (self.global_step + 1) % max(1, t.log_every_n_steps) == 0:
            self.check_finite()

    def check_finite(self) -> None:
        first = getattr(self, "_first_bad_step", None)
        if first is not None and int(first) >= 0:
            self._diverged(int(first), None)

    def _diverged(self, step: int, value: Optional[float]) -> None:
        what = "is not finite" if value is None else f"is {value}"
        raise DivergedError(
            f"training loss {what} at step {step}: the run diverged and is stopped (no checkpoint of this state is "
            f"written, nothing is scored). Lower the learning rate (model.init_args.lr={self.hparams.lr}), lengthen the "
            f"warmup (model.init_args.warmup_steps={self.hparams.warmup_steps}) or keep gradient clipping on "
            "(trainer.gradient_clip_val)."
        )

    def on_train_end(self) -> None:
        self.check_finite()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.eval_sums(batch)
        self.val_metrics.update(out["nll"], batch["target"], self.units_per_token, out.get("correct"))

    def on_test_epoch_start(self) -> None:
        self._windows: list[tuple[Tensor, ...]] = []

    def test_step(self, batch: dict, batch_idx: int) -> None:
        tgt = batch["target"]
        out = self.eval_sums(batch, per_sequence=True)
        self.test_metrics.update(out["nll"], tgt, self.units_per_token, out.get("correct"))
        # per-window sums, for a bootstrap paired over the same test windows across methods
        row = (batch["index"].detach().cpu(), out["rows"].detach().float().cpu(), (tgt >= 0).sum(1).cpu())
        if "correct_rows" in out:
            row += (out["correct_rows"].cpu(),)
        self._windows.append(row)

    def _log_eval(self, metrics: NLLMetrics, stage: str) -> None:
        values = metrics.compute(self.unit)  # already reduced across ranks by torchmetrics
        metrics.reset()
        values.pop("tokens")
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=False, sync_dist=False)
        self.log(f"{stage}_nll", values["nll"], prog_bar=True, logger=False)

    def on_validation_epoch_end(self) -> None:
        self._log_eval(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._log_eval(self.test_metrics, "test")
        self.test_windows = self._gather_windows()

    def _gather_windows(self) -> dict:
        """{"index", "nll", "tokens"} (and "correct" when accuracy is reported): every test
        window's start (a probe's example number), summed NLL (nats), scored targets (and top-1
        hits), from all ranks, sorted by index (RunSummary writes them to the summary)."""
        parts = self._windows
        fields = ["index", "nll", "tokens"] + (["correct"] if self.report_accuracy else [])
        local = [torch.cat([p[i] for p in parts]).tolist() if parts else [] for i in range(len(fields))]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, local)
        else:
            gathered = [local]
        rows = sorted({int(r[0]): r[1:] for g in gathered for r in zip(*g)}.items())
        out = {"index": [i for i, _ in rows]}
        for k, name in enumerate(fields[1:]):
            out[name] = [r[k] if name == "nll" else int(r[k]) for _, r in rows]
        return out

    # --- optimizer ---------------------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        decay, no_decay, mix, seen = [], [], {}, set()
        embed_ids = {id(self.net.embed.weight)}
        for _name, p in self.net.named_parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if getattr(p, "depth_mix", False):
                # a reader may ask for its own multiplier on top of mix_lr_mult (LIMe's router: 10x)
                mix.setdefault(float(getattr(p, "lr_mult", 1.0)), []).append(p)
            elif p.ndim >= 2 and id(p) not in embed_ids:
                decay.append(p)
            else:
                no_decay.append(p)
        groups = [
            {"params": decay, "weight_decay": self.hparams.weight_decay, "lr_mult": 1.0},
            {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
        ]
        for mult, params in sorted(mix.items()):
            groups.append({"params": params, "weight_decay": 0.0, "lr_mult": self.hparams.mix_lr_mult * mult})
        for g in groups:
            g["lr"] = self.hparams.lr * g["lr_mult"]
        return groups

    def lr_lambda(self, total_steps: int):
        warm, sched = self.hparams.warmup_steps, self.hparams.schedule
        floor = self.hparams.min_lr_ratio

        def f(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            if sched == "constant":
                return 1.0
            if sched == "wsd":
                start = int(total_steps * (1 - self.hparams.decay_fraction))
                if step < start:
                    return 1.0
                frac = min(1.0, (step - start) / max(1, total_steps - start))
                return 1.0 - (1.0 - floor) * frac
            frac = min(1.0, (step - warm) / max(1, total_steps - warm))
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))

        return f

    def _grad_scaler(self):
        """The fp16 GradScaler of the precision plugin, if any (bf16 and fp32 have none)."""
        return getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer is not None else None

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip with torch directly when no fp16 grad scaler is in play. Lightning's mixed-precision
        plugin refuses to clip for a fused optimizer (it assumes the optimizer unscales), which is
        only a concern with an fp16 scaler: under bf16-mixed nothing is scaled. With a scaler the
        optimizer is not fused (``configure_optimizers``) and Lightning's own path unscales first."""
        if self._grad_scaler() is not None:
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if not gradient_clip_val:
            return
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(self.parameters(), gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)

    def configure_optimizers(self):
        # one fused kernel per step wherever torch has one (CUDA, CPU, ...): the same update, faster;
        # an fp16 grad scaler unscales through the unfused path (configure_gradient_clipping)
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        fused = self.device.type in _get_fused_kernels_supported_devices() and self._grad_scaler() is None
        opt = torch.optim.AdamW(self.param_groups(), betas=tuple(self.hparams.betas), fused=fused)
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1
        total = int(total) if math.isfinite(total) else 10**9
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_lambda(total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- checkpoints -------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.check_finite()  # never write the state of a diverged run
        dm = getattr(self.trainer, "datamodule", None)
        checkpoint["lit_vattn"] = {
            "vocab_size": self.hparams.vocab_size,
            "arch": {"class": type(self.net.arch).__name__, **self.net.arch.switches()},  # constructor arguments
            "tokenizer": dm.settings().get("tokenizer") if dm is not None else None,
            "tokenizer_identity": dm.tokenizer_identity()
            if dm is not None and hasattr(dm, "tokenizer_identity")
            else None,
            "data": type(dm).__name__ if dm is not None else None,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        info = checkpoint.get("lit_vattn", {})
        ck_vocab = info.get("vocab_size", checkpoint.get("hyper_parameters", {}).get("vocab_size"))
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data_tok = dm.settings().get("tokenizer") if dm is not None else None
        if (
            ck_vocab is not None
            and ck_vocab != self.hparams.vocab_size
            or (data_tok is not None and info.get("tokenizer") not in (None, data_tok))
        ):
            raise ValueError(
                f"vocabulary mismatch: the checkpoint was trained on vocabulary {ck_vocab} "
                f"(tokenizer {info.get('tokenizer')}), but the data gives {self.hparams.vocab_size} "
                f"(tokenizer {data_tok}). Use the data settings the checkpoint was trained with."
            )
        ck_ident = info.get("tokenizer_identity")
        if ck_ident is not None and dm is not None and hasattr(dm, "tokenizer_identity"):
            data_ident = dm.tokenizer_identity()
            if ck_ident != data_ident:
                raise ValueError(
                    f"tokenizer mismatch: the checkpoint was trained with tokenizer {ck_ident}, the data is tokenized "
                    f"by {data_ident} (same kind and size, different token ids: e.g. a BPE trained on other text). "
                    f"Use the data (and its shard cache, {dm.shard_dir}) the checkpoint was trained with."
                )
