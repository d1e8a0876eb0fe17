"""The sub-commands of `mmsa`, one registry entry each (``name -> "module:main"``, loaded when run).
A distribution may add its own under the entry-point group ``mmsa.commands``: a callable
``main(argv) -> exit status``."""
from __future__ import annotations

from ..registry import Registry

__all__ = ["COMMANDS"]

COMMANDS = Registry("command", "mmsa.commands", {
    "models": "mmsa_alignmamba.cli.models:main",
    "components": "mmsa_alignmamba.cli.components:main",
    "make-synthetic": "mmsa_alignmamba.cli.make_synthetic:main",
    "inspect": "mmsa_alignmamba.cli.inspect:main",
    "ablate": "mmsa_alignmamba.cli.ablate:main",
    "leaderboard": "mmsa_alignmamba.cli.leaderboard:main",
    "tune": "mmsa_alignmamba.cli.tune:main",
    "report": "mmsa_alignmamba.cli.report:main",
    "predict": "mmsa_alignmamba.cli.predict:main",
    "export": "mmsa_alignmamba.cli.export:main",
    "bench": "mmsa_alignmamba.bench:main",
})
