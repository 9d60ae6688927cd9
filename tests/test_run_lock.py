"""One writer per run folder: a second process is refused, a killed holder blocks nothing."""

import os
import signal
import subprocess
import sys
import time

import pytest

from dorl.cli import main
from dorl.run_lock import RunLockedError, hold_run_dir

HOLD = """
import sys, time
from dorl.run_lock import hold_run_dir
with hold_run_dir(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    proc = _holder(tmp_path / "run")
    try:
        with pytest.raises(RunLockedError, match=rf"in use by pid {proc.pid} on .* since "):
            with hold_run_dir(tmp_path / "run"):
                pass
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_holder_does_not_block_the_next_run(tmp_path):
    proc = _holder(tmp_path / "run")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with hold_run_dir(tmp_path / "run"):  # the kernel released the lock with the process
        pass
    with hold_run_dir(tmp_path / "run"):  # and a finished holder released it too
        pass


def test_the_command_line_refuses_a_held_run_dir_with_exit_2(tmp_path, caplog):
    proc = _holder(tmp_path / "run")
    try:
        t0 = time.perf_counter()
        assert main(["umap", f"run_dir={tmp_path / 'run'}"]) == 2
        assert time.perf_counter() - t0 < 10
    finally:
        proc.kill()
        proc.wait()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "is in use by pid" in errors[0]
    assert not (tmp_path / "run" / "config.umap.yaml").exists()
