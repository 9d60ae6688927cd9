"""One writer per run folder.

``dorl embed``, ``apply``, ``classify run`` and ``umap`` hold an exclusive ``fcntl.flock`` on
``run_dir/.dorl.lock`` while they run. A second process that wants the same folder is refused
with one line naming the holder (pid, host, command, start time), instead of resuming stores the
first one is still writing. The lock is the kernel's: it goes with the holding process, so a run
that was killed (SIGKILL, power loss) leaves nothing that blocks the next one.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dorl.errors import InputError
from dorl.provenance import utc_now

LOCK_FILE = ".dorl.lock"


class RunLockedError(InputError, ValueError):
    """Another process holds the run folder."""


@contextmanager
def hold_run_dir(run_dir: str | Path) -> Iterator[Path]:
    """Hold ``run_dir`` for this process for the ``with`` block.

    Raises
    ------
    RunLockedError
        When another live process holds it.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            try:
                h = json.loads(holder)
                who = (f"pid {h['pid']} on {h['host']} ({' '.join(h['command'])}, since "
                       f"{h['started_utc']})")
            except (ValueError, KeyError, TypeError):
                who = "another process"
            raise RunLockedError(f"{run_dir} is in use by {who}: wait for it, or choose another "
                                 f"run_dir") from None
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "command": ["dorl", *sys.argv[1:]], "started_utc": utc_now()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
