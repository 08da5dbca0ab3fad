"""Training throughput of every method, through Lightning and through a plain PyTorch loop, in paired rounds.

Every method's model is built once (same seed, shape, data, fused AdamW, gradient clipping, precision)
and kept alive; then ``--rounds`` rounds each give every runner ``--steps`` timed steps in turn, the
order rotated each round, with the machine's matrix-multiply rate measured in the same round. A
ratio (method vs vanilla, Lightning vs plain) is taken within a round and summarised over rounds as a
geometric mean with a 95 % Student-t interval, so drift of a shared machine (other jobs, clocks,
thermals) cancels instead of landing on whichever row ran during it.

- Plain loop: the ceiling the Lightning path is held to. Lightning path: what ``lit-vattn fit`` runs
  (the LightningModule, the CLI's tokens/s + MFU monitor, learning-rate monitor, CSV logger; no
  checkpointing or validation), each ``trainer.fit`` in its own thread that takes a turn's steps
  only when the round gives it the turn (Python's threads interleave by a hand-written baton here
  because Lightning has no API to pause and resume a fit in place).
- CPU time: process CPU seconds per 1,000 tokens (all threads): on a shared machine it is less
  sensitive to other jobs than wall time, and wall / CPU shows how parallel a step ran.
- FLOPs per token are measured (``FlopCounterMode`` on a meta twin, ``lit_vattn.model.flops``). MFU is
  given against the matrix-multiply rate measured in the same round (CUDA: 8192^3, CPU: 2048^3, in the
  training precision, random data, median of timings) and, on a GPU, the datasheet rate.
- Peak memory (CUDA): the most a turn allocated above what was live at its start, plus the runner's
  own resting state (weights, optimizer state), so models kept alive side by side do not count.
- ``--archs`` defaults to every registered method; ``arch@backend`` picks the multi-source attention
  kernel (``las@merge``). ``--lightning vanilla`` measures the Lightning path for vanilla only (its
  overhead does not depend on the method; halves memory and compilations on one GPU).
- ``--json-dir`` writes one JSON per row after every round (a time limit loses only the round under
  way); ``--from-json`` rebuilds the table from such files. ``--profile las,va`` writes
  torch.profiler's top kernels of a few plain-loop steps per arch.

    python benchmarks/throughput.py --d-model 768 --n-layer 12 --n-head 12 --seq-len 1024 \\
        --batch-size 32 --precision bf16-mixed --compile --lightning vanilla --out results/throughput-h100.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from scipy import stats

from datamodules import TextDataModule
from lit_vattn import GPTConfig, LanguageModel
from lit_vattn.arch.registry import methods, registry
from lit_vattn.io import write_text
from lit_vattn.provenance import git_commit


def parse_arch(spec: str) -> tuple[str, str | None]:
    """'las@merge' -> ('las', 'merge'); 'va' -> ('va', None)."""
    name, _, backend = spec.partition("@")
    if name not in registry():
        raise SystemExit(f"--archs: unknown architecture {name!r}; choose from {', '.join(registry())}")
    return name, backend or None


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads (torch {torch.__version__})"


def config(args, backend: str | None) -> GPTConfig:
    return GPTConfig(
        n_layer=args.n_layer,
        n_head=args.n_head,
        d_model=args.d_model,
        max_seq_len=args.seq_len,
        attn_backend=backend or args.attn_backend,
    )


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


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def allocated(device) -> int:
    return torch.cuda.memory_allocated() if device.type == "cuda" else 0


class Turn:
    """Times one runner's turn: wall and process CPU seconds, and (CUDA) the most it allocated above
    what was live when it began."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.live = allocated(self.device)
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        self.extra = torch.cuda.max_memory_allocated() - self.live if self.device.type == "cuda" else None


class PlainRunner:
    """One method's model, fused AdamW and data stream in a plain PyTorch loop."""

    def __init__(self, args, dm, spec, device):
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        self.device, self.dm = device, dm
        before = allocated(device)
        lm = build(args, dm, spec)
        self.net = lm.net.to(device)
        # fused wherever torch has the kernel, as the LightningModule's optimizer (configure_optimizers)
        fused = device.type in _get_fused_kernels_supported_devices()
        self.opt = torch.optim.AdamW(lm.param_groups(), betas=(0.9, 0.95), fused=fused)
        if args.compile:
            self.net.compile()
        self.dtype = torch.bfloat16 if args.precision == "bf16-mixed" else None
        self.it = iter(dm.train_dataloader())
        self.params, self.flops_tok = self.net.num_params(), self.net.flops_per_token(args.seq_len)
        self.turn(args.warmup)
        self.rest = allocated(device) - before

    def _batch(self):
        try:
            return next(self.it)
        except StopIteration:  # a long benchmark outlasts one epoch of the embedded corpus
            self.it = iter(self.dm.train_dataloader())
            return next(self.it)

    def step(self):
        b = self._batch()
        x = b["input"].to(self.device, non_blocking=True)
        y = b["target"].to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            loss = self.net(x, targets=y) / y.numel()  # as LanguageModel: float32 NLL in the compiled forward
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.loss = loss

    def turn(self, k: int) -> Turn:
        with Turn(self.device) as t:
            for _ in range(k):
                self.step()
        return t

    def close(self):
        del self.net, self.opt


class Baton(pl.Callback):
    """Lets a fit running in another thread take exactly the steps of its turn. A turn ends when the
    step after it is about to start: Lightning's end-of-step work (logging, callbacks) and the next
    batch's fetch belong to the turn that caused them."""

    def __init__(self):
        self.go, self.done = threading.Semaphore(0), threading.Event()
        self.remaining, self.running = 0, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.running:
            self.remaining -= 1
            if self.remaining == 0:
                self.running = False
                sync(pl_module.device)
                self.done.set()
        self.go.acquire()


class LightningRunner:
    """One method's ``trainer.fit`` in its own thread, stepping only during its turns."""

    def __init__(self, args, dm, spec, device, total_steps: int):
        from lightning.pytorch.callbacks import LearningRateMonitor
        from lightning.pytorch.loggers import CSVLogger

        from lit_vattn.train.callbacks import TokenThroughputMonitor

        self.device, self.baton, self.error = device, Baton(), None
        self.logdir = tempfile.TemporaryDirectory()
        before = allocated(device)
        lm = build(args, dm, spec, compile=args.compile)
        trainer = pl.Trainer(
            accelerator=device.type if device.type == "cuda" else "cpu",
            devices=1,
            precision=args.precision,
            max_steps=total_steps + 1,  # one more than the turns take, so every turn ends at a step start
            limit_val_batches=0,
            logger=CSVLogger(self.logdir.name),
            log_every_n_steps=10,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            gradient_clip_val=1.0,
            callbacks=[self.baton, TokenThroughputMonitor(), LearningRateMonitor(logging_interval="step")],
            use_distributed_sampler=False,
        )

        def fit():
            try:
                trainer.fit(lm, datamodule=dm)
            except BaseException as e:  # handed to the main thread by turn()
                self.error = e
                self.baton.done.set()

        self.thread = threading.Thread(target=fit, name=f"fit-{spec}", daemon=True)
        self.thread.start()
        self.turn(args.warmup)
        self.rest = allocated(device) - before

    def turn(self, k: int) -> Turn:
        b = self.baton
        b.done.clear()
        b.remaining, b.running = k, True
        with Turn(self.device) as t:
            b.go.release(k)
            b.done.wait()
        if self.error is not None:
            raise RuntimeError(f"the Lightning fit of {self.thread.name} failed") from self.error
        return t

    def close(self):
        self.baton.go.release(1)  # the extra step; the fit then ends
        self.thread.join()
        self.logdir.cleanup()


def matmul_rate(device, dtype: torch.dtype, reps: int = 5) -> float:
    """Measured FLOP/s of an n x n x n product on random data (n = 8192 on CUDA, 2048 on a CPU):
    median of ``reps`` timed products."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def profile(runner: PlainRunner, path: Path, n: int = 5) -> str:
    """Top kernels of n plain-loop steps by device time, written to ``path``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    device = runner.device
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with tprofile(activities=acts) as prof:
        runner.turn(n)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    try:
        table = prof.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=90)
    except (KeyError, AttributeError):
        table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=90)
    path.write_text(f"# torch.profiler, {n} plain-loop steps, {hardware()}\n\n{table}\n")
    return str(path.name)


# --- summary -----------------------------------------------------------------------------------


def paired(num: list[float], den: list[float]) -> tuple[float, float, float]:
    """Geometric mean of the per-round ratios num/den and its 95 % Student-t interval (nan with one round)."""
    logs = [math.log(a / b) for a, b in zip(num, den)]
    m = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(m), math.nan, math.nan
    half = stats.t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(m), math.exp(m - half), math.exp(m + half)


def ci(r: tuple[float, float, float]) -> str:
    return f"{r[0]:.3f}" + (f" [{r[1]:.3f}, {r[2]:.3f}]" if not math.isnan(r[1]) else "")


def tok_s(path: dict, tokens: int) -> list[float]:
    return [tokens / w for w in path["wall"]]


def table(rows: list[dict], head: dict) -> str:
    """Every ratio pairs two rows of the same run (``head['run']``) round by round."""
    bases = {r["head"]["run"]: r for r in rows if r["arch"] == "vanilla"}
    sheet = head.get("datasheet_peak")
    pk = lambda v: f"{v / 2**30:.2f}" if v is not None else "n/a"  # noqa: E731
    lines = [
        f"# Training throughput ({head['device_type']})",
        "",
        f"- command: `{head['command']}`",
        f"- commit: {head['commit']}, date: {head['date']}",
        f"- hardware: {head['hardware']}",
        f"- shape: {head['shape']}",
        f"- rounds: {head['rounds']} (each runner {head['steps']} timed steps per round, order rotated each round, "
        f"after {head['warmup']} warm-up steps); ratios are geometric means of per-round ratios with 95 % t-intervals",
        "- FLOPs/token: measured with FlopCounterMode (forward + backward; matmuls and dense attention over every key "
        "read); results/flops.md compares them with the plain decoder's closed form. speed x FLOPs = (tokens/s vs "
        "vanilla) x (FLOPs vs vanilla): 1.000 when a method's slowdown is exactly its extra arithmetic",
        f"- matmul rate measured in each round: median {statistics.median(head['matmul_rates']) / 1e12:.3g} TFLOP/s "
        f"({head['matmul_shape']}); MFU = plain-loop FLOPs/s over the same round's rate"
        + (f"; datasheet rate {sheet / 1e12:.0f} TFLOP/s" if sheet else ""),
        "",
        "| arch | params | FLOPs/token | FLOPs vs vanilla | plain tok/s | plain vs vanilla | speed x FLOPs "
        "| CPU s / 1k tok | CPU time vs vanilla | Lightning tok/s | Lightning / plain | MFU (measured) "
        "| MFU (datasheet) | peak mem (GiB) | mem vs vanilla |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = bases.get(r["head"]["run"])
        if base is None:
            raise SystemExit(
                f"row {r['arch']} has no vanilla row from its own run ({r['head']['run']}): add vanilla to --archs"
            )
        tokens, p, li = r["tokens_per_turn"], r["plain"], r.get("lightning")
        speed = tok_s(p, tokens)
        vs = paired(speed, tok_s(base["plain"], tokens))
        flops = r["flops_tok"] / base["flops_tok"]
        cpu_ktok = statistics.median(c / tokens * 1e3 for c in p["cpu"])
        cpu_vs = paired(p["cpu"], base["plain"]["cpu"])
        rates = r["head"]["matmul_rates"]
        mfu = statistics.median(r["flops_tok"] * s / m for s, m in zip(speed, rates))
        sheet_mfu = f"{r['flops_tok'] * statistics.median(speed) / sheet:.1%}" if sheet else "n/a"
        mem = p["peak"]
        mem_vs = f"{mem / base['plain']['peak']:.2f}" if mem and base["plain"]["peak"] else "n/a"
        light = (
            (f"{statistics.median(tok_s(li, tokens)):,.0f}", ci(paired(tok_s(li, tokens), speed)))
            if li
            else ("n/a", "n/a")
        )
        lines.append(
            f"| {r['arch']} | {r['params'] / 1e6:.2f} M | {r['flops_tok'] / 1e6:.1f} M | {flops:.3f} | "
            f"{statistics.median(speed):,.0f} | {ci(vs)} | {vs[0] * flops:.3f} | {cpu_ktok:.2f} | {ci(cpu_vs)} | "
            f"{light[0]} | {light[1]} | {mfu:.1%} | {sheet_mfu} | {pk(mem)} | {mem_vs} |"
        )
    return "\n".join(lines) + "\n"


def write(path: str, text: str) -> None:
    write_text(path, text)


def rebuild(files: list[str], out: str | None) -> None:
    rows = [json.loads(Path(f).read_text()) for f in files]
    order = list(methods())
    rows.sort(key=lambda r: (r["arch"] != "vanilla", order.index(parse_arch(r["arch"])[0]), r["arch"]))
    old = [f for f, r in zip(files, rows) if "tokens_per_turn" not in r]
    if old:
        raise SystemExit(
            f"--from-json: {old[0]} was written by the benchmark before paired rounds (no per-round timings); "
            "its table is the one committed beside it"
        )
    heads = {json.dumps({k: r["head"][k] for k in ("hardware", "shape", "commit")}) for r in rows}
    if len(heads) > 1:
        raise SystemExit(f"--from-json: rows from different hardware, shapes or commits cannot share a table: {heads}")
    head = dict(rows[0]["head"], command="; ".join(dict.fromkeys(r["head"]["command"] for r in rows)))
    text = table(rows, head)
    print(text)
    if out:
        write(out, text)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default=None, help="comma-separated arch[@backend]; default: every registered method")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5, help="paired rounds (>= 2 for an interval)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per runner per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, autotuning)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    p.add_argument("--compile", action="store_true")
    p.add_argument(
        "--lightning",
        default="all",
        choices=["all", "vanilla", "none"],
        help="which archs also run the Lightning path (its overhead does not depend on the method)",
    )
    p.add_argument(
        "--attn-backend",
        default="auto",
        choices=["auto", "sdpa", "flex", "merge"],
        help="multi-source attention kernel for archs without @backend; auto = flex on CUDA",
    )
    p.add_argument("--tokenizer", default="gpt2", choices=["gpt2", "bpe"])
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--profile", default="", help="comma-separated arch specs to profile (plain loop, 5 steps)")
    p.add_argument("--json-dir", default=None, help="write one JSON per row here after every round")
    p.add_argument("--from-json", nargs="*", default=None, help="rebuild the table from these JSON rows (no runs)")
    p.add_argument("--out", default=None, help="Markdown file to write the table to")
    args = p.parse_args()

    if args.from_json is not None:
        return rebuild(args.from_json, args.out)
    specs = args.archs.split(",") if args.archs else list(methods())
    for s in specs:
        parse_arch(s)
    if "vanilla" not in specs:
        raise SystemExit("--archs: include vanilla, the row every ratio is taken against")
    specs.sort(key=lambda s: s != "vanilla")
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
            "AdamW (fused where torch has the kernel), grad clip 1.0"
        ),
        "rounds": 0,
        "steps": args.steps,
        "warmup": args.warmup,
        "matmul_shape": f"{8192 if device.type == 'cuda' else 2048}^3, {str(dtype).removeprefix('torch.')}",
        "matmul_rates": [],
        "datasheet_peak": get_available_flops(device, dtype) if device.type == "cuda" else None,
    }
    json_dir = Path(args.json_dir) if args.json_dir else None
    if json_dir:
        json_dir.mkdir(parents=True, exist_ok=True)
    total = args.warmup + args.rounds * args.steps
    rows, runners = {}, []
    for spec in specs:
        plain = PlainRunner(args, dm, spec, device)
        rows[spec] = {
            "arch": spec,
            "params": plain.params,
            "flops_tok": plain.flops_tok,
            "tokens_per_turn": args.steps * args.batch_size * args.seq_len,
            "plain": {"wall": [], "cpu": [], "peak": None},
            "lightning": None,
        }
        runners.append((spec, "plain", plain))
        if args.lightning == "all" or (args.lightning == "vanilla" and spec == "vanilla"):
            rows[spec]["lightning"] = {"wall": [], "cpu": [], "peak": None}
            runners.append((spec, "lightning", LightningRunner(args, dm, spec, device, total)))
        print(f"{spec}: built and warmed up ({plain.flops_tok / 1e6:.1f} MFLOP/token)", flush=True)
    for spec in filter(None, args.profile.split(",")):
        if spec not in rows:
            raise SystemExit(f"--profile: {spec!r} is not among --archs")
        prof_dir = json_dir or Path(args.out or ".").parent
        profile(
            next(r for s, k, r in runners if s == spec and k == "plain"),
            prof_dir / f"profile-{spec.replace('@', '-')}.txt",
        )
    for rnd in range(args.rounds):
        head["matmul_rates"].append(matmul_rate(device, dtype))
        head["rounds"] = rnd + 1
        shift = rnd % len(runners)
        for spec, kind, runner in runners[shift:] + runners[:shift]:
            t = runner.turn(args.steps)
            path = rows[spec][kind]
            path["wall"].append(t.wall)
            path["cpu"].append(t.cpu)
            if t.extra is not None:
                path["peak"] = max(path["peak"] or 0, t.extra + runner.rest)
        for row in rows.values():
            row["head"] = dict(head, matmul_rates=list(head["matmul_rates"]))
            if json_dir:
                write(str(json_dir / f"row-{row['arch'].replace('@', '-')}.json"), json.dumps(row, indent=1))
        print(f"round {rnd + 1}/{args.rounds} done", flush=True)
    for _, _, runner in runners:
        runner.close()
    text = table(list(rows.values()), head)
    print(text)
    if args.out:
        write(args.out, text)


if __name__ == "__main__":
    main()
