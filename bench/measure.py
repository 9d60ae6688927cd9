"""What every bench script measures besides its own figures: wall time, images/s and peak memory
of named stages."""

from __future__ import annotations

import contextlib
import logging
import resource
import time

logger = logging.getLogger("bench")


def peak_rss_mib() -> float:
    """Peak resident memory of this process, or of its largest finished child, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


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
