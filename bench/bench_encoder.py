"""Throughput of the bare LiteMedSAM image encoder on the CPU.

Prints img/s (wall) and CPU seconds per image of ``encoder(x)`` under ``torch.inference_mode`` for
each input size, with and without folded BatchNorm, channels-last memory and bf16 autocast, plus
the process's peak RSS. Wall time is only meaningful on an otherwise idle machine.

    .venv/bin/python bench/bench_encoder.py                      # 128/160/192/224/256 px, batch 8
    .venv/bin/python bench/bench_encoder.py --sizes 256 --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import time

import torch
from measure import peak_rss_mib
from torch.utils.flop_counter import FlopCounterMode

from dorl.sam.checkpoints import default_checkpoint
from dorl.sam.models import BACKBONES


def _encoder(folded: bool, channels_last: bool) -> torch.nn.Module:
    model = BACKBONES["litemedsam"](256)
    state = torch.load(default_checkpoint("litemedsam"), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    encoder = model.image_encoder
    encoder.train(False)
    if folded:
        encoder.fold_batchnorm()
    encoder.channels_last = channels_last
    if channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
    return encoder


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _time(encoder, x, bf16: bool, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median process CPU seconds of one batch."""
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    walls, cpus = [], []
    with torch.inference_mode(), autocast:
        encoder(x)  # warm-up
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), _cpu_seconds()
            encoder(x)
            walls.append(time.perf_counter() - wall)
            cpus.append(_cpu_seconds() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 160, 192, 224, 256])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
          f"median of {args.repeats}")
    print(f"load average at start: {os.getloadavg()[0]:.1f} (others' work slows wall time; the "
          f"CPU s/img column counts only this process)")
    print(f"{'size':>5} {'GFLOP/img':>9} {'BN':>8} {'layout':>13} {'dtype':>5} {'img/s':>7} "
          f"{'CPU s/img':>9}")
    for size in args.sizes:
        x = torch.rand(args.batch, 3, size, size)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            _encoder(True, False)(x[:1])
        gflop = counter.get_total_flops() / 1e9
        for folded, channels_last, bf16 in [(False, False, False), (True, False, False),
                                            (True, True, False), (True, True, True)]:
            encoder = _encoder(folded, channels_last)
            xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            wall, cpu = _time(encoder, xin, bf16, args.repeats)
            print(f"{size:>5} {gflop:>9.1f} {'folded' if folded else 'unfolded':>8} "
                  f"{'channels_last' if channels_last else 'NCHW':>13} "
                  f"{'bf16' if bf16 else 'fp32':>5} {args.batch / wall:>7.2f} "
                  f"{cpu / args.batch:>9.2f}", flush=True)
    print(f"peak RSS {peak_rss_mib() / 1024:.2f} GB")


if __name__ == "__main__":
    main()
