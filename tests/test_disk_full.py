"""A full disk during `dorl embed`: one line naming the file and the errno, exit status 2, and
the rerun on a disk with room resumes the segmentation store."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dorl import write_failures
from dorl.cli import main
from dorl.sam import inference
from dorl.sam.segmentation import SegmentationWriter, store_state
from dorl.write_failures import describe, ensure_room, write_failure
from tests.conftest import REPO, tiny_config
from tests.helpers import dorl_records

Usage = namedtuple("Usage", "total used free")


def test_write_failures_are_read_from_python_and_hdf5_errors():
    assert write_failure(OSError(errno.ENOSPC, "No space left on device", "a.h5")) == (28, "a.h5")
    hdf5 = OSError("Can't write data (file write failed: time = Sun, filename = '/r/s.h5', "
                   "file descriptor = 5, errno = 28, error message = 'No space left on device')")
    assert write_failure(hdf5) == (28, "/r/s.h5")
    assert describe(hdf5) == "/r/s.h5: No space left on device (ENOSPC)"
    assert write_failure(OSError(errno.EROFS, "Read-only file system", "x"))[0] == errno.EROFS
    assert write_failure(FileNotFoundError(errno.ENOENT, "missing", "x")) is None
    assert write_failure(ValueError("no")) is None


def test_ensure_room_names_the_file_and_the_space(tmp_path, monkeypatch):
    monkeypatch.setattr(write_failures.shutil, "disk_usage", lambda _: Usage(10, 10, 2 << 20))
    ensure_room(tmp_path / "a.h5", 100)  # 100 B + the 1 MiB margin fit in 2 MiB
    with pytest.raises(OSError, match=r"2.0 MiB free, 3.2 MiB needed") as caught:
        ensure_room(tmp_path / "new" / "a.h5", 2 << 20)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename.endswith("a.h5")


@pytest.fixture
def dorl_log():
    with dorl_records() as records:
        yield records


def test_a_full_disk_mid_segmentation_exits_2_and_the_rerun_resumes(tmp_path, monkeypatch,
                                                                     dorl_log):
    """The disk fills after two chunks of the segmentation store (a fault-injecting
    ``disk_usage``): one line, exit 2, the two chunks kept; with room again the same command
    resumes from them and finishes."""
    config = tmp_path / "tiny.yaml"
    OmegaConf.save(tiny_config(tmp_path, "sam.finetune.enabled=false"), config)
    assert main(["data", "prepare", "-c", str(config)]) == 0
    monkeypatch.setattr(inference, "READ_CHUNK", 16)
    store = tmp_path / "run" / "segmentation.h5"
    real, write = shutil.disk_usage, SegmentationWriter.write
    written = []

    def counted(self, start, part):
        write(self, start, part)
        written.append(len(part))

    def filling(path):  # the disk is full once two chunks are stored
        return Usage(1, 1, 0) if len(written) >= 2 else real(path)

    monkeypatch.setattr(SegmentationWriter, "write", counted)
    monkeypatch.setattr(write_failures.shutil, "disk_usage", filling)
    assert main(["embed", "-c", str(config)]) == 2
    errors = [r.getMessage() for r in dorl_log if r.levelno >= logging.ERROR]
    assert errors == [f"cannot write {store}: No space left on device: 0.0 MiB free, "
                      f"{errors[0].split(', ')[1].split(' MiB')[0]} MiB needed (ENOSPC); "
                      f"32 of 72 cells are stored in {store}: the same command resumes from "
                      f"there where the disk has room"]
    assert not (tmp_path / "run" / "features.h5ad").exists()
    monkeypatch.setattr(write_failures.shutil, "disk_usage", real)
    dorl_log.clear()
    assert main(["embed", "-c", str(config)]) == 0
    text = "\n".join(r.getMessage() for r in dorl_log)
    assert "resuming segmentation from" in text and "32 of 72 cells done" in text
    assert (tmp_path / "run" / "features.h5ad").is_file()


def test_embed_on_a_real_full_file_system_is_one_line_without_a_crash(tmp_path):
    """A 1 MiB tmpfs (needs the right to mount, as root in CI): before the guard, HDF5 wrote
    into the full disk silently and the process ended in a segmentation fault."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        config = tmp_path / "tiny.yaml"
        OmegaConf.save(tiny_config(tmp_path, f"run_dir={disk / 'run'}",
                                   "sam.finetune.enabled=false"), config)
        assert main(["data", "prepare", "-c", str(config)]) == 0
        done = subprocess.run([sys.executable, "-m", "dorl", "embed", "-c", str(config)],
                              capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
        assert done.returncode == 2, done.stderr[-2000:]
        errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
        assert len(errors) == 1 and "No space left on device" in errors[0], done.stderr[-2000:]
        assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
        store = disk / "run" / "segmentation.h5"
        assert str(store) in errors[0]
        assert store_state(store, _signature(store)) == (0, False)  # nothing counted as done
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def _signature(store: Path) -> str:
    import h5py

    with h5py.File(store, "r") as f:
        return str(f.attrs["signature"])
