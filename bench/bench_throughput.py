"""Stage 1 at the hardware's speed: cells/s of each stage and its fraction of the machine's peak.

The peak is measured here first: the best of a few large matrix products (``torch.mm``) in each
precision, at the same thread count. Each stage's floating-point operations per cell are counted
by torch's ``FlopCounterMode``; its achieved FLOP/s over the peak says how far it runs from what
the CPU (or GPU) can do.

Stages (random pixels; the cost does not depend on what the cells show):
  sam encoder     the segmentation model's image encoder (LiteMedSAM, or --backbone vit_b with
                  $DORL_CHECKPOINT_DIR) at --sam-size, batch --sam-batch (sam.infer.batch_size)
  sam encoder, before
                  the same as it ran before 2026-12-07: attention scores written out
                  (bench/reference_attention.py), batch --before-batch (the old default, 16)
  mask decoding   prompt encoder + mask decoder on those embeddings (centre-box prompt)
  cell encoder    EfficientNet-Lite0's forward pass on --crop-size crops (one view)
  training step   one step of the cross-domain encoder's training: two views of --batch cells,
                  forward, backward and AdamW (no view augmentation: that is host work); its
                  FLOPs are taken as three forward passes

    python bench/bench_throughput.py                           # float32, and bf16 if native
    python bench/bench_throughput.py --precisions float32 --threads 2 --device cpu
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch
import torch.nn.functional as F
from measure import peak_rss_mib
from reference_attention import written_out_attention
from torch.utils.flop_counter import FlopCounterMode

from dorl.cae.models import CellAutoencoder
from dorl.config import package_defaults
from dorl.device import resolve_bf16
from dorl.features.efficientnet import build_efficientnet_lite
from dorl.sam.models import build_sam

DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_flops(dtype: torch.dtype, device: torch.device, n: int = 2048) -> float:
    """Best FLOP/s of an n x n matrix product in ``dtype`` (bf16 as autocast does: bf16 inputs,
    float32 accumulation)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    seconds = min(timed(lambda: torch.mm(a, b), device, 3) for _ in range(3))
    return 2 * n ** 3 / seconds


def flops_of(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def autocast(device: torch.device, precision: str):
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def stages(args, device: torch.device, precision: str):
    """(name, cells per call, callable, a callable with its FLOPs) of every stage."""
    sam = build_sam(args.backbone, "default", args.sam_size).to(device).eval().requires_grad_(False)
    images = torch.randn(args.sam_batch, 3, args.sam_size, args.sam_size, device=device)
    before_images = torch.randn(args.before_batch, 3, args.sam_size, args.sam_size, device=device)
    with torch.no_grad(), autocast(device, precision):
        embedding = sam.encode(images)

    # no_grad, not inference_mode: torch's FLOP counter cannot hook inference tensors.
    def encode():
        with torch.no_grad(), autocast(device, precision):
            sam.encode(images)

    def encode_before():
        with torch.no_grad(), autocast(device, precision), written_out_attention():
            sam.encode(before_images)

    def decode():
        with torch.no_grad(), autocast(device, precision):
            sam.decode(embedding, "center_box", 0.9)

    cell_encoder = build_efficientnet_lite("efficientnet_lite0", "default").to(device).eval() \
        .requires_grad_(False)
    crops = torch.rand(args.batch, 3, args.crop_size, args.crop_size, device=device) * 255
    crops = crops.contiguous(memory_format=torch.channels_last)

    def cell_forward():
        with torch.no_grad(), autocast(device, precision):
            cell_encoder(crops)

    model = CellAutoencoder(build_efficientnet_lite("efficientnet_lite0", "default"), 128,
                            False, 0).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    views = torch.cat([crops, crops.flip(-1)])

    def train_step():
        with autocast(device, precision):
            out = model(views)
            z = F.normalize(out.projected.float(), dim=1)
            loss = -(z[: args.batch] * z[args.batch:]).sum(1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def train_forward():
        with torch.no_grad(), autocast(device, precision):
            model(views)

    # A training step's FLOPs: three times its forward pass (forward, and the backward pass's
    # two products per layer); torch's counter overcounts the depthwise convolutions' backward.
    return [("sam encoder, before", args.before_batch, encode_before, encode_before),
            ("sam encoder", args.sam_batch, encode, encode),
            ("mask decoding", args.sam_batch, decode, decode),
            ("cell encoder", args.batch, cell_forward, cell_forward),
            ("training step", args.batch, train_step,
             lambda: [train_forward() for _ in range(3)])]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precisions", nargs="+", choices=list(DTYPES), default=None,
                    help="default: float32, and bf16 where it is native")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backbone", default="litemedsam")
    ap.add_argument("--sam-size", type=int, default=128)
    ap.add_argument("--crop-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16, help="cells per call of the cell encoder "
                    "and the training step")
    ap.add_argument("--sam-batch", type=int,
                    default=int(package_defaults().sam.infer.batch_size))
    ap.add_argument("--before-batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    precisions = args.precisions or (["float32", "bf16"] if resolve_bf16("auto", device)
                                     else ["float32"])
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
          f"batch {args.batch} (SAM {args.sam_batch}, before {args.before_batch}), SAM "
          f"{args.backbone} at {args.sam_size} px, cell crops "
          f"{args.crop_size} px, median of {args.repeats}; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'precision':>9} {'stage':>19} {'GFLOP/cell':>10} {'cells/s':>8} {'GFLOP/s':>8} "
          f"{'of peak':>7}")
    for precision in precisions:
        peak = peak_flops(DTYPES[precision], device)
        print(f"{precision:>9} {'matmul peak':>19} {'':>10} {'':>8} {peak / 1e9:>8.1f} "
              f"{'100%':>7}", flush=True)
        for name, cells, fn, counted in stages(args, device, precision):
            flops = flops_of(counted) / cells
            seconds = timed(fn, device, args.repeats)
            rate = cells / seconds
            print(f"{precision:>9} {name:>19} {flops / 1e9:>10.2f} {rate:>8.2f} "
                  f"{flops * rate / 1e9:>8.1f} {flops * rate / peak:>7.0%}", flush=True)
    print(f"peak RSS {peak_rss_mib() / 1024:.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
