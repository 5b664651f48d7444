"""The intake spool: where accepted webhooks wait, on local disk, while Redis cannot take them.

Rocket.Chat gives up on a webhook after 5 attempts 20 s apart (docs/rocketchat.md §1.4), so a Redis outage longer than
that would lose events if the web process could only answer 503. Instead, an event that cannot be recorded in Redis is
appended to a spool file (one JSON line, flushed and fsynced before the 200 is sent) and replayed into Redis, in
order and through the same deduplicating script, as soon as Redis answers again. While a backlog exists, new
events go to the spool too, so they cannot overtake older ones.

Files: one per web process and outage (``<time>-<pid>-<n>.jsonl``), held with an exclusive ``flock`` while the
process writes or replays it. A file whose process died is unlocked and is replayed by any web process.

Limits: the spool is as durable as the disk under ``SPOOL_DIR`` (on Heroku the dyno's disk lives until the dyno
restarts: set ``SPOOL_DIR`` to a persistent volume where there is one); order is kept per web process, not across
processes; past ``SPOOL_MAX_BYTES`` or on a disk error the event is refused with 503 and Rocket.Chat retries it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("bridge.spool")

SUFFIX = ".jsonl"


class SpoolFull(OSError):
    pass


class Spool:
    def __init__(self, directory: str | Path, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        self._file: Any = None  # the file this process appends to now, locked
        self._path: Path | None = None
        self._count = 0
        self._claimed: dict[Path, Any] = {}
        self.backlog = any(self.directory.glob(f"*{SUFFIX}")) if self.directory.exists() else False

    def append(self, entry: dict[str, Any]) -> None:
        """Write one entry durably (fsync) or raise ``OSError``; the caller answers 200 only after this."""
        line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        with self.lock:
            if self._size() + len(line) > self.max_bytes:
                raise SpoolFull(f"spool over SPOOL_MAX_BYTES ({self.max_bytes})")
            if self._file is None:
                self._open()
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
            self.backlog = True

    def close(self) -> None:
        """Seal the current file and let go of claimed ones (at shutdown); nothing is lost, all stays on disk."""
        with self.lock:
            self._seal()
            for path in list(self._claimed):
                self.release(path)

    def claim(self) -> list[Path]:
        """Seal this process's current file and lock every file no live process holds, oldest first."""
        with self.lock:
            self._seal()
            if not self.directory.exists():
                self.backlog = False
                return []
            claimed = []
            for path in sorted(self.directory.glob(f"*{SUFFIX}")):
                if path in self._claimed:
                    claimed.append(path)  # still ours from an earlier claim
                    continue
                handle = open(path, "rb")  # noqa: SIM115 - kept open: the lock lives as long as the handle
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()  # a live process is writing or replaying it
                    continue
                self._claimed[path] = handle
                claimed.append(path)
            if not claimed and not any(self.directory.glob(f"*{SUFFIX}")):
                self.backlog = False
            return claimed

    def entries(self, path: Path) -> Iterator[dict[str, Any]]:
        handle = self._claimed[path]
        handle.seek(0)
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                log.warning("spool %s: line %d was cut short (crash while writing) and is skipped", path.name, number)
                return
            yield json.loads(raw)

    def finish(self, path: Path) -> None:
        """Every entry of ``path`` is in Redis: remove it."""
        path.unlink(missing_ok=True)
        self.release(path)

    def release(self, path: Path) -> None:
        handle = self._claimed.pop(path, None)
        if handle is not None:
            handle.close()

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._count += 1
        self._path = self.directory / f"{time.time_ns():020d}-{os.getpid()}-{self._count}{SUFFIX}"
        self._file = open(self._path, "ab")  # noqa: SIM115 - held open, locked, until sealed
        fcntl.flock(self._file, fcntl.LOCK_EX)
        log.warning("Redis unavailable: spooling accepted webhooks to %s", self._path)

    def _seal(self) -> None:
        if self._file is not None:
            self._file.close()  # closing releases our flock: the file becomes claimable
            self._file = None

    def _size(self) -> int:
        if not self.directory.exists():
            return 0
        return sum(path.stat().st_size for path in self.directory.glob(f"*{SUFFIX}"))
