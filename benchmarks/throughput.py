"""Training throughput of each architecture through the LightningModule and a plain PyTorch loop.

Both paths train the same model shape on the same DataModule batches in the same process; the
plain loop is the ceiling the Lightning path is held to (target >= 0.95x). Reports tokens/s, MFU
(FLOPs per token from the model's own count over the device's bf16/fp32 peak) and peak memory, and
writes a Markdown table with the command, commit, date and hardware.

    python benchmarks/throughput.py --d-model 768 --n-layer 12 --n-head 12 --seq-len 1024 \
        --batch-size 32 --precision bf16-mixed --compile --archs vanilla --out results/throughput-h100.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as pl  # noqa: E402
from lightning.fabric.utilities.throughput import get_available_flops  # noqa: E402

from datamodules import TextDataModule  # noqa: E402
from lit_vattn import GPTConfig, LanguageModel  # noqa: E402
from lit_vattn.arch import registry  # noqa: E402
from lit_vattn.reproduce import git_commit  # noqa: E402


def make_arch(name: str):
    return registry()[name]()


class StepTimer(pl.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.t0, self.t1, self.n = warmup, None, None, 0

    def _sync(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup and self.t0 is None:
            self._sync()
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.t0 is not None:
            self.n += 1
            self._sync()
            self.t1 = time.perf_counter()


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads (torch {torch.__version__})"


def plain_loop(args, dm, arch, device) -> dict:
    torch.manual_seed(0)
    lm = LanguageModel(config=config(args), arch=make_arch(arch), vocab_size=dm.vocab_size, lr=args.lr, warmup_steps=1)
    net = lm.net.to(device)
    opt = torch.optim.AdamW(lm.param_groups(), betas=(0.9, 0.95), fused=device.type == "cuda")
    if args.compile:
        net.compile()
    dtype = torch.bfloat16 if args.precision == "bf16-mixed" else None
    it = iter(dm.train_dataloader())
    reset_peak(device)
    t0 = None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync(device)
            t0 = time.perf_counter()
        b = next(it)
        x = b["input"].to(device, non_blocking=True)
        y = b["target"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = net(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    dt = time.perf_counter() - t0
    return {"tok_s": args.steps * args.batch_size * args.seq_len / dt, "peak": peak(device),
            "params": net.num_params(), "flops_tok": net.flops_per_token(args.seq_len), "loss": loss.item()}


def lightning_path(args, dm, arch, device) -> dict:
    torch.manual_seed(0)
    lm = LanguageModel(config=config(args), arch=make_arch(arch), vocab_size=dm.vocab_size, lr=args.lr,
                       warmup_steps=1, compile=args.compile)
    timer = StepTimer(args.warmup)
    trainer = pl.Trainer(
        accelerator=device.type if device.type == "cuda" else "cpu", devices=1, precision=args.precision,
        max_steps=args.warmup + args.steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
        callbacks=[timer], use_distributed_sampler=False,
    )
    reset_peak(device)
    trainer.fit(lm, datamodule=dm)
    dt = timer.t1 - timer.t0
    return {"tok_s": timer.n * args.batch_size * args.seq_len / dt, "peak": peak(device)}


def config(args) -> GPTConfig:
    return GPTConfig(n_layer=args.n_layer, n_head=args.n_head, d_model=args.d_model, max_seq_len=args.seq_len,
                     attn_backend=args.attn_backend)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak(device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default="vanilla")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--precision", default="32-true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--attn-backend", default="auto", choices=["auto", "sdpa", "flex", "merge"],
                   help="multi-source attention kernel (LAS, SLA concat); auto = flex on CUDA")
    p.add_argument("--tokenizer", default="gpt2", choices=["gpt2", "bpe"])
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--out", default=None, help="Markdown file to write the table to")
    args = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_float32_matmul_precision("high")
    dm = TextDataModule(tokenizer=args.tokenizer, seq_len=args.seq_len, batch_size=args.batch_size,
                        num_workers=args.num_workers)
    dm.prepare_data()
    dm.setup("fit")
    dtype = torch.bfloat16 if args.precision == "bf16-mixed" else torch.float32
    avail = get_available_flops(device, dtype) if device.type == "cuda" else None

    rows = []
    for arch in args.archs.split(","):
        plain = plain_loop(args, dm, arch, device)
        light = lightning_path(args, dm, arch, device)
        rows.append((arch, plain, light))
        print(f"{arch}: plain {plain['tok_s']:.0f} tok/s, lightning {light['tok_s']:.0f} tok/s", flush=True)

    base = rows[0][2]["tok_s"]
    lines = [
        f"# Training throughput ({device.type})",
        "",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- commit: {git_commit()}, date: {datetime.date.today().isoformat()}",
        f"- hardware: {hardware()}",
        f"- shape: d={args.d_model}, L={args.n_layer}, H={args.n_head}, T={args.seq_len}, batch {args.batch_size}, "
        f"vocab {dm.vocab_size} ({args.tokenizer}), precision {args.precision}, compile {args.compile}, "
        f"multi-source attention {args.attn_backend}; "
        f"{args.steps} timed steps after {args.warmup} warm-up steps",
        "",
        "| arch | params | FLOPs/token | plain tok/s | Lightning tok/s | Lightning / plain | vs first arch | MFU (Lightning) | peak mem plain (GiB) | peak mem Lightning (GiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arch, plain, light in rows:
        mfu = f"{plain['flops_tok'] * light['tok_s'] / avail:.1%}" if avail else "n/a (CPU)"
        pk = lambda v: f"{v:.2f}" if v is not None else "n/a"  # noqa: E731
        lines.append(
            f"| {arch} | {plain['params'] / 1e6:.2f} M | {plain['flops_tok'] / 1e6:.1f} M | {plain['tok_s']:,.0f} | "
            f"{light['tok_s']:,.0f} | {light['tok_s'] / plain['tok_s']:.3f} | {light['tok_s'] / base:.3f} | {mfu} | "
            f"{pk(plain['peak'])} | {pk(light['peak'])} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(table)
        os.replace(tmp, out)


if __name__ == "__main__":
    main()
