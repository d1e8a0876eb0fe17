"""Claims on trainings in a results folder, so that runners sharing it never train the same thing twice.

Before a runner (local or Ray, on any machine that sees the folder) trains a group of cells, it
creates ``<res_dir>/claims/<name>.claim`` with ``O_CREAT | O_EXCL``: the file system lets exactly
one runner create it. While it trains, a background thread touches the claim every ``HEARTBEAT_S``
seconds; when the training's cells are saved, the claim is removed. A claim whose heartbeat is
older than ``STALE_S`` (its runner was killed, or its machine died) may be taken over: the taker
renames it out of the way first, so two takers cannot both win.

Why files: the results folder is the one thing every runner of a sweep already shares, and
``O_EXCL`` creation and ``rename`` are atomic on local file systems and on NFS (v3+).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

__all__ = ["ClaimBook", "HEARTBEAT_S", "STALE_S"]

HEARTBEAT_S = 5.0
STALE_S = 60.0


class ClaimBook:
    """The claims of one runner in one results folder."""

    def __init__(self, res_dir, stale_s: float = STALE_S, heartbeat_s: float = HEARTBEAT_S):
        self.root = Path(res_dir) / "claims"
        self.stale_s, self.heartbeat_s = stale_s, heartbeat_s
        self.owner = {"runner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
        self.held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="claims-heartbeat", daemon=True)
        self._beat.start()

    def _path(self, name: str) -> Path:
        return self.root / f"{name}.claim"

    def claim(self, name: str) -> bool:
        """Claim ``name`` for this runner; False when a live runner holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(name)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._take_over_if_stale(path):
                    return False
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({**self.owner, "claimed_at": time.time()}, f)
            with self._lock:
                self.held.add(name)
            return True
        return False

    def _take_over_if_stale(self, path: Path) -> bool:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return True                       # released meanwhile: try to create it again
        if age < self.stale_s:
            return False
        # Move the stale claim aside under a name only this runner uses; whoever renames it first
        # wins, the others find it gone and retry the O_EXCL create (which only one of them wins).
        aside = path.with_name(f"{path.name}.stale-{self.owner['runner']}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return True
        aside.unlink(missing_ok=True)
        return True

    def held_by_others(self, name: str) -> bool:
        """A live claim of another runner on ``name``."""
        path = self._path(name)
        with self._lock:
            if name in self.held:
                return False
        try:
            return time.time() - path.stat().st_mtime < self.stale_s
        except FileNotFoundError:
            return False

    def release(self, name: str) -> None:
        with self._lock:
            self.held.discard(name)
        self._path(name).unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with self._lock:
                names = list(self.held)
            for name in names:
                try:
                    os.utime(self._path(name))
                except FileNotFoundError:     # taken over as stale after a long stall: let it go
                    with self._lock:
                        self.held.discard(name)

    def close(self) -> None:
        """Stop the heartbeat and release every claim still held (a failed training is retried later)."""
        self._stop.set()
        for name in list(self.held):
            self.release(name)
        try:
            self.root.rmdir()                 # only when no runner holds anything any more
        except OSError:
            pass
