"""`mmsa components`: every registered component and the distribution that provides it."""
from __future__ import annotations

from .options import ArgumentParser

__all__ = ["main"]


def main(argv) -> int:
    from .. import components
    ArgumentParser(prog="mmsa components",
                   description="List every registered component (local and global alignments, missing-modality "
                               "protocols) with the distribution that provides it.").parse_args(argv)
    for kind, registry in components.KINDS.items():
        for name, component in registry.entries().items():
            print(f"{kind:17s} {name:12s} {component.distribution}")
    return 0
