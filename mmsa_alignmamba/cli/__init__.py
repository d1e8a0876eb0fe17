"""The `mmsa` command: MMSA's `python -m MMSA` flags for every registered model (:mod:`.run`), plus
one sub-command per module, found by name in :data:`.commands.COMMANDS`.

    mmsa -m alignmamba -d mosi --synthetic -s 1111          train + test, results under ~/MMSA/
    mmsa models | components | make-synthetic | ablate | leaderboard | tune | report | predict | export | bench

Every failure caused by the user's input (unknown model, missing data file, bad option) prints
one line `mmsa: error: …` and exits with status 2.
"""
from __future__ import annotations

import sys

from ..errors import InputError
from ..host import UnknownModelError
from .commands import COMMANDS

__all__ = ["main", "COMMANDS"]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in COMMANDS:
            command, argv = COMMANDS.get(argv[0]), argv[1:]
        else:
            from .run import main as command
        return command(argv)
    except (InputError, UnknownModelError) as e:
        print(f"mmsa: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmsa: interrupted; finished runs are kept and will be skipped when you run the same command again",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
