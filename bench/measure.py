"""What every bench script measures besides its own figures: wall time, images/s and peak memory
of named stages."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

logger = logging.getLogger("bench")


def peak_rss_mib() -> float:
    """Peak resident memory of this process, or of its largest finished child, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


@dataclass(frozen=True)
class ChildRun:
    """A Python child process's exit status, its own peak RSS (MiB), seconds and output."""

    status: int
    peak_rss_mib: float
    seconds: float
    stdout: str
    stderr: str


def python_child(args: list[str], env: dict[str, str] | None = None,
                 kill_when: Callable[[], bool] | None = None) -> ChildRun:
    """Run ``python args`` in a child of its own; its peak RSS is its own (``os.wait4``), not
    the largest of every child so far (its reaped descendants count in it).

    ``kill_when`` is polled every 0.2 s; when it returns True the child gets SIGKILL.
    """
    # Output goes to files, not pipes: a full pipe would stall the child, and reading it through
    # Popen.communicate would reap the child before wait4 could.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=err, text=True,
                                env=env)
        while kill_when is not None and proc.poll() is None:
            if kill_when():
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.2)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        return ChildRun(proc.returncode, usage.ru_maxrss / 1024, seconds, out.read(), err.read())


def step_child(code: str) -> tuple[ChildRun, float]:
    """Run the Python ``code`` (which prints the seconds of one step last) in a child of its own;
    its run and that figure. A failed child raises, with the end of its error output."""
    child = python_child(["-c", code])
    if child.status:
        raise RuntimeError(f"the step failed (exit {child.status}): {child.stderr[-500:]}")
    return child, float(child.stdout.split()[-1])


class Stopwatch:
    """Records seconds, images/s and peak memory of each named stage."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def record(self, stage: str, n_images: int, seconds: float) -> None:
        self.rows.append({"stage": stage, "images": n_images, "seconds": seconds,
                          "images_per_s": n_images / seconds if seconds > 0 else float("nan"),
                          "peak_rss_mib": peak_rss_mib()})
        logger.info("%s: %d images in %.1f s", stage, n_images, seconds)

    @contextlib.contextmanager
    def time(self, stage: str, n_images: int):
        t0 = time.perf_counter()
        yield
        self.record(stage, n_images, time.perf_counter() - t0)
