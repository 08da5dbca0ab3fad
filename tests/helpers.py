"""What many test files share: the repository's paths and the tiny shape CLI runs use."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU = str(ROOT / "configs/trainer/cpu.yaml")
TEXT = str(ROOT / "configs/data/text.yaml")
# 2 layers x 64 wide, 32-token windows of 4: a CLI run that trains a step in well under a second
TINY = (
    "--model.init_args.config.n_layer 2 --model.init_args.config.n_head 2 --model.init_args.config.d_model 64 "
    "--data.init_args.seq_len 32 --data.init_args.batch_size 4"
).split()
QUIET = ["--trainer.enable_progress_bar", "false"]
