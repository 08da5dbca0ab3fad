"""``lit-vattn-prepare --config X.yaml``: tokenize the data of a config into its shards and stop.

For clusters whose compute nodes are air-gapped or should not spend GPU time on tokenization:
run on a login node with the same ``LIT_VATTN_CACHE`` the jobs will use.
"""

from __future__ import annotations

import sys

from lit_vattn.train.cli import cli_main


def main(args: list[str] | None = None) -> None:
    cli = cli_main(args if args is not None else sys.argv[1:], run=False)
    dm = cli.datamodule
    dm.prepare_data()
    dm.setup()
    splits = ", ".join(f"{s} {v['tokens']:,} tokens" for s, v in dm.meta["splits"].items())
    print(f"shards ready in {dm.shard_dir}: vocabulary {dm.meta['vocab_size']}, {splits}")


if __name__ == "__main__":
    main()
