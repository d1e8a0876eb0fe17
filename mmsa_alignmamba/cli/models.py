"""`mmsa models`: every registered model and where it comes from."""
from __future__ import annotations

from .. import host
from .options import ArgumentParser

__all__ = ["main"]


def main(argv) -> int:
    ArgumentParser(prog="mmsa models", description="List every registered model.").parse_args(argv)
    for name, source in host.registered_models().items():
        print(f"{name:12s} {source}")
    return 0
