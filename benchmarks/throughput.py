"""Training throughput of each architecture through Lightning and through a plain PyTorch loop.

Both paths train the same model (same seed, shape, data batches, fused AdamW, gradient clipping,
precision) in the same process; the plain loop is the ceiling the Lightning path is held to
(target >= 0.95x). The Lightning path is what ``lit-vattn fit`` runs: the LightningModule with the
CLI's callbacks (tokens/s and MFU monitor, learning-rate monitor) and a CSV logger; checkpointing
and validation are off so that only training steps are timed. Reports tokens/s, MFU, peak memory:

- FLOPs per token are measured (``FlopCounterMode`` on a meta twin of the model, ``lit_vattn.model.flops``).
- MFU is given against the bf16 (or fp32) matrix-multiply rate measured in the same process
  (``--matmul-peak``: an 8192^3 product on random data, median of CUDA-event timings) and against
  the datasheet rate Lightning knows for the GPU.
- An arch may name its multi-source attention backend: ``las@merge``, ``las@flex``.
- ``--json-dir`` writes one JSON per row as soon as it is measured (a time limit loses only the
  rows not yet run); ``--from-json`` rebuilds the table from such files.
- ``--profile las,va`` writes torch.profiler's top CUDA kernels of a few plain-loop steps per arch.

    python benchmarks/throughput.py --d-model 768 --n-layer 12 --n-head 12 --seq-len 1024 \\
        --batch-size 32 --precision bf16-mixed --compile --archs vanilla,va,sla,las@flex,las@merge \\
        --out results/throughput-h100.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.throughput import get_available_flops

from datamodules import TextDataModule
from lit_vattn import GPTConfig, LanguageModel
from lit_vattn.arch.registry import registry
from lit_vattn.io import write_text
from lit_vattn.provenance import git_commit


def parse_arch(spec: str) -> tuple[str, str | None]:
    """'las@merge' -> ('las', 'merge'); 'va' -> ('va', None)."""
    name, _, backend = spec.partition("@")
    if name not in registry():
        raise SystemExit(f"--archs: unknown architecture {name!r}; choose from {', '.join(registry())}")
    return name, backend or None


class StepTimer(pl.Callback):
    """Wall time from the start of step ``warmup`` to the end of the last step, with one CUDA
    synchronisation at each end and none in between (a sync per step would stop the host from
    queueing work ahead and understate Lightning's throughput)."""

    def __init__(self, warmup: int, last: int):
        self.warmup, self.last, self.t0, self.t1 = warmup, last, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup and self.t0 is None:
            sync(pl_module.device)
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.last:
            sync(pl_module.device)
            self.t1 = time.perf_counter()


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads (torch {torch.__version__})"


def build(args, dm, spec: str, **kw) -> LanguageModel:
    name, backend = parse_arch(spec)
    torch.manual_seed(0)
    return LanguageModel(
        config=config(args, backend),
        arch=registry()[name](),
        vocab_size=dm.vocab_size,
        lr=args.lr,
        warmup_steps=1,
        **kw,
    )


def plain_loop(args, dm, spec, device, profile_dir: Path | None = None) -> dict:
    lm = build(args, dm, spec)
    net = lm.net.to(device)
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    # fused wherever torch has the kernel, as the LightningModule's optimizer (configure_optimizers)
    fused = device.type in _get_fused_kernels_supported_devices()
    opt = torch.optim.AdamW(lm.param_groups(), betas=(0.9, 0.95), fused=fused)
    if args.compile:
        net.compile()
    dtype = torch.bfloat16 if args.precision == "bf16-mixed" else None
    it = iter(dm.train_dataloader())

    def step():
        b = next(it)
        x = b["input"].to(device, non_blocking=True)
        y = b["target"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = net(x, targets=y) / y.numel()  # as LanguageModel: float32 NLL inside the compiled forward
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    reset_peak(device)
    for _ in range(args.warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync(device)
    dt = time.perf_counter() - t0
    out = {
        "tok_s": args.steps * args.batch_size * args.seq_len / dt,
        "peak": peak(device),
        "params": net.num_params(),
        "flops_tok": net.flops_per_token(args.seq_len),
        "loss": loss.item(),
    }
    if profile_dir is not None:
        out["profile"] = profile(step, device, profile_dir / f"profile-{spec.replace('@', '-')}.txt")
    return out


def profile(step, device, path: Path, n: int = 5) -> str:
    """Top kernels of n steps by device time, written to ``path``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with tprofile(activities=acts) as prof:
        for _ in range(n):
            step()
        sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    try:
        table = prof.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=90)
    except (KeyError, AttributeError):
        table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=90)
    path.write_text(f"# torch.profiler, {n} plain-loop steps, {hardware()}\n\n{table}\n")
    return str(path.name)


def lightning_path(args, dm, spec, device) -> dict:
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger

    from lit_vattn.train.callbacks import TokenThroughputMonitor

    lm = build(args, dm, spec, compile=args.compile)
    last = args.warmup + args.steps
    timer = StepTimer(args.warmup, last)
    with tempfile.TemporaryDirectory() as logdir:
        trainer = pl.Trainer(
            accelerator=device.type if device.type == "cuda" else "cpu",
            devices=1,
            precision=args.precision,
            max_steps=last,
            limit_val_batches=0,
            logger=CSVLogger(logdir),
            log_every_n_steps=10,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            gradient_clip_val=1.0,
            callbacks=[timer, TokenThroughputMonitor(), LearningRateMonitor(logging_interval="step")],
            use_distributed_sampler=False,
        )
        reset_peak(device)
        trainer.fit(lm, datamodule=dm)
    dt = timer.t1 - timer.t0
    return {"tok_s": args.steps * args.batch_size * args.seq_len / dt, "peak": peak(device)}


def config(args, backend: str | None) -> GPTConfig:
    return GPTConfig(
        n_layer=args.n_layer,
        n_head=args.n_head,
        d_model=args.d_model,
        max_seq_len=args.seq_len,
        attn_backend=backend or args.attn_backend,
    )


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak(device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def matmul_peak(dtype: torch.dtype, n: int = 8192, reps: int = 20) -> float:
    """Measured FLOP/s of an n x n x n product on random data: median of ``reps`` timed products."""
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    times.sort()
    return 2 * n**3 / times[len(times) // 2]


def table(rows: list[dict], head: dict) -> str:
    """Ratios to vanilla are taken within one process (``head['run']``): each run carries its own
    vanilla row, so rows merged from several runs are never compared across processes."""
    bases = {r["head"]["run"]: r for r in rows if r["arch"] == "vanilla"}
    measured, sheet = head.get("matmul_peak"), head.get("datasheet_peak")
    pk = lambda v: f"{v:.2f}" if v is not None else "n/a"  # noqa: E731
    lines = [
        f"# Training throughput ({head['device_type']})",
        "",
        f"- command: `{head['command']}`",
        f"- commit: {head['commit']}"
        + (f" ({head['commit_note']})" if head.get("commit_note") else "")
        + f", date: {head['date']}",
        f"- hardware: {head['hardware']}",
        f"- shape: {head['shape']}",
        "- FLOPs/token: measured with FlopCounterMode (forward + backward; matmuls and dense attention over every key read); "
        "results/flops.md compares them with the plain decoder's closed form",
    ]
    if measured:
        runs = ", ".join(f"{b['head']['matmul_peak'] / 1e12:.0f}" for b in bases.values())
        lines.append(
            f"- matmul rate measured in each run ({len(bases)} run(s), each with its own vanilla row): {runs} TFLOP/s "
            f"(8192^3 in the training precision, random data, median); datasheet rate: {sheet / 1e12:.0f} TFLOP/s; "
            "MFU (measured peak) uses the rate of the row's own run"
        )
    lines += [
        "",
        "| arch | params | FLOPs/token | FLOPs vs vanilla | plain tok/s | Lightning tok/s | Lightning / plain "
        "| Lightning vs vanilla | MFU (measured peak) | MFU (datasheet) | peak mem plain (GiB) | peak mem Lightning (GiB) | mem vs vanilla |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p, li = r["plain"], r["lightning"]
        base = bases.get(r["head"]["run"])
        if base is None:
            raise SystemExit(
                f"row {r['arch']} has no vanilla row from its own run ({r['head']['run']}): add vanilla to --archs"
            )
        mfu = lambda peak_: f"{p['flops_tok'] * li['tok_s'] / peak_:.1%}" if peak_ else "n/a"  # noqa: E731
        measured = r["head"].get("matmul_peak")
        mem_ratio = (
            f"{li['peak'] / base['lightning']['peak']:.2f}" if li["peak"] and base["lightning"]["peak"] else "n/a"
        )
        lines.append(
            f"| {r['arch']} | {p['params'] / 1e6:.2f} M | {p['flops_tok'] / 1e6:.1f} M | "
            f"{p['flops_tok'] / base['plain']['flops_tok']:.3f} | {p['tok_s']:,.0f} | {li['tok_s']:,.0f} | "
            f"{li['tok_s'] / p['tok_s']:.3f} | {li['tok_s'] / base['lightning']['tok_s']:.3f} | {mfu(measured)} | {mfu(sheet)} | "
            f"{pk(p['peak'])} | {pk(li['peak'])} | {mem_ratio} |"
        )
    return "\n".join(x for x in lines if x is not None) + "\n"


def write(path: str, text: str) -> None:
    write_text(path, text)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--archs", default="vanilla", help="comma-separated; arch@backend picks the multi-source attention kernel"
    )
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, autotuning)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--precision", default="32-true")
    p.add_argument("--compile", action="store_true")
    p.add_argument(
        "--attn-backend",
        default="auto",
        choices=["auto", "sdpa", "flex", "merge"],
        help="multi-source attention kernel for archs without @backend; auto = flex on CUDA",
    )
    p.add_argument("--tokenizer", default="gpt2", choices=["gpt2", "bpe"])
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--profile", default="", help="comma-separated arch specs to profile (plain loop, 5 steps)")
    p.add_argument("--json-dir", default=None, help="write one JSON per measured row here, as it is measured")
    p.add_argument("--from-json", nargs="*", default=None, help="rebuild the table from these JSON rows (no runs)")
    p.add_argument("--out", default=None, help="Markdown file to write the table to")
    args = p.parse_args()

    if args.from_json is not None:
        rows = [json.loads(Path(f).read_text()) for f in args.from_json]
        heads = {json.dumps({k: r["head"][k] for k in ("hardware", "shape", "commit")}) for r in rows}
        head = dict(rows[0]["head"], command="; ".join(dict.fromkeys(r["head"]["command"] for r in rows)))
        if len(heads) > 1:
            raise SystemExit(
                f"--from-json: rows from different hardware, shapes or commits cannot share a table: {heads}"
            )
        text = table(rows, head)
        print(text)
        if args.out:
            write(args.out, text)
        return

    specs = args.archs.split(",")
    for s in specs:
        parse_arch(s)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_float32_matmul_precision("high")
    dm = TextDataModule(
        tokenizer=args.tokenizer, seq_len=args.seq_len, batch_size=args.batch_size, num_workers=args.num_workers
    )
    dm.prepare_data()
    dm.setup("fit")
    dtype = torch.bfloat16 if args.precision == "bf16-mixed" else torch.float32
    head = {
        "device_type": device.type,
        "run": f"{os.uname().nodename}-{os.getpid()}-{time.time():.0f}",
        "command": "python " + " ".join(sys.argv),
        "commit": git_commit(),
        "date": datetime.date.today().isoformat(),
        "hardware": hardware(),
        "shape": (
            f"d={args.d_model}, L={args.n_layer}, H={args.n_head}, T={args.seq_len}, batch {args.batch_size}, "
            f"vocab {dm.vocab_size} ({args.tokenizer}), precision {args.precision}, compile {args.compile}, "
            f"AdamW (fused where torch has the kernel), grad clip 1.0; {args.steps} timed steps after {args.warmup} warm-up steps"
        ),
        "matmul_peak": matmul_peak(dtype) if device.type == "cuda" else None,
        "datasheet_peak": get_available_flops(device, dtype) if device.type == "cuda" else None,
    }
    if head["matmul_peak"]:
        print(f"measured matmul rate: {head['matmul_peak'] / 1e12:.0f} TFLOP/s", flush=True)
    prof = set(filter(None, args.profile.split(",")))
    json_dir = Path(args.json_dir) if args.json_dir else None
    if json_dir:
        json_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in specs:
        torch._dynamo.reset()  # each arch compiles afresh; the on-disk inductor cache still serves repeats
        plain = plain_loop(args, dm, spec, device, json_dir if spec in prof else None)
        light = lightning_path(args, dm, spec, device)
        row = {"arch": spec, "plain": plain, "lightning": light, "head": head}
        rows.append(row)
        if json_dir:
            (json_dir / f"row-{spec.replace('@', '-')}.json").write_text(json.dumps(row, indent=1))
        print(
            f"{spec}: plain {plain['tok_s']:,.0f} tok/s, lightning {light['tok_s']:,.0f} tok/s, "
            f"peak {plain['peak']} / {light['peak']} GiB, {plain['flops_tok'] / 1e6:.1f} MFLOP/token",
            flush=True,
        )
    text = table(rows, head)
    print(text)
    if args.out:
        write(args.out, text)


if __name__ == "__main__":
    main()
