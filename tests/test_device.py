"""Device choice and bfloat16 autocast resolution."""

from __future__ import annotations

import logging

import pytest
import torch

from dorl import device as device_mod
from dorl.device import get_device, resolve_bf16

CPU = torch.device("cpu")


def test_auto_follows_native_bf16_support_of_the_cpu(monkeypatch):
    monkeypatch.setattr(device_mod, "_cpu_has_native_bf16", lambda: True)
    assert resolve_bf16("auto", CPU) is True
    monkeypatch.setattr(device_mod, "_cpu_has_native_bf16", lambda: False)
    assert resolve_bf16("auto", CPU) is False
    assert resolve_bf16("AUTO", CPU) is False


def test_explicit_values_win_and_emulated_bf16_warns(monkeypatch, caplog):
    monkeypatch.setattr(device_mod, "_cpu_has_native_bf16", lambda: False)
    assert resolve_bf16(False, CPU) is False
    with caplog.at_level(logging.WARNING, logger="dorl.device"):
        assert resolve_bf16(True, CPU) is True
    assert "slower" in caplog.text
    with pytest.raises(ValueError, match="auto"):
        resolve_bf16("sometimes", CPU)


def test_auto_is_off_on_mps_and_cpu_flags_are_read_without_error():
    assert resolve_bf16("auto", torch.device("mps")) is False
    assert isinstance(device_mod._cpu_has_native_bf16(), bool)


def test_explicit_cuda_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="device=cpu"):
        get_device("cuda")
    assert get_device("auto").type in ("cpu", "mps")
