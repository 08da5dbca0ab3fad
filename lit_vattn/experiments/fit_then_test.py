"""``python -m lit_vattn.experiments.fit_then_test <fit arguments> --then <test arguments>``: one
table run's ``lit-vattn fit`` and ``lit-vattn test`` in one process, as ``lit-vattn-reproduce``
starts them. The two commands are exactly those a user runs (each builds its model and data from its
own arguments; test loads the checkpoint fit wrote), so every record is the same as with two
processes; the second start-up (Python, torch, Lightning imports, the tokenizer and shards opened,
and on a GPU a new compile) is what one process saves. Test runs only when fit succeeded."""

from __future__ import annotations

import signal
import sys
from typing import Optional

SEPARATOR = "--then"


def split(argv: list[str]) -> tuple[list[str], list[str]]:
    """(fit arguments, test arguments) either side of the one ``--then``."""
    if argv.count(SEPARATOR) != 1:
        raise SystemExit(f"usage: fit_then_test <fit arguments> {SEPARATOR} <test arguments> (exactly one {SEPARATOR})")
    i = argv.index(SEPARATOR)
    return argv[:i], argv[i + 1 :]


def main(argv: Optional[list[str]] = None) -> None:
    from lit_vattn.train.cli import cli_main

    fit, test = split(sys.argv[1:] if argv is None else argv)
    # On SIGTERM Lightning stops fit by raising a SystemExit with status 0 (its handler keeps this
    # one): a stopped run is then not tested, and the exit status says why, as a killed process's would
    stopped = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
    for args in (["fit", *fit], ["test", *test]):
        print(f"\n$ lit-vattn {' '.join(args)}", flush=True)
        try:
            cli_main(args)
        except SystemExit:
            if not stopped:
                raise
        if stopped:
            print(f"stopped by {signal.Signals(stopped[0]).name}: not tested", file=sys.stderr, flush=True)
            sys.exit(128 + stopped[0])


if __name__ == "__main__":
    main()
