"""Peak memory and time of one LoRA fine-tuning step of LiteMedSAM, with and without its block
activations recomputed in the backward pass (``sam.finetune.checkpoint_blocks``).

Each variant runs in a child process of its own (its peak RSS from ``os.wait4``): three forward
and backward passes of a batch of random images at the default input size.

    python bench/bench_finetune_memory.py [--batch 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys

from measure import step_child

STEP = """
import time, torch
from dorl.config import load_config
from dorl.sam.finetune import segmentation_loss
from dorl.sam.lora import add_lora
from dorl.sam.models import sam_from_config
torch.set_num_threads({threads})
cfg = load_config(None, [])
model, _ = sam_from_config(cfg)
add_lora(model, int(cfg.sam.lora.rank), float(cfg.sam.lora.alpha), 0.0, ["qkv"], False)
if {checkpointed}:
    model.image_encoder.checkpoint_blocks()
model.train()
size = int(cfg.sam.image_size)
images = torch.randint(0, 255, ({batch}, size, size, 3), dtype=torch.uint8)
masks = torch.zeros({batch}, size, size, dtype=torch.bool)
masks[:, size // 4:3 * size // 4, size // 4:3 * size // 4] = True
t0 = time.perf_counter()
for _ in range(3):
    loss = segmentation_loss(model(images, "center_box", 0.9), masks, 0.2, 0.8)
    loss.backward()
print((time.perf_counter() - t0) / 3)
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    for checkpointed in (False, True):
        code = STEP.format(threads=args.threads, checkpointed=checkpointed, batch=args.batch)
        child, step_s = step_child(code)
        print(f"checkpoint_blocks={checkpointed}: peak RSS {child.peak_rss_mib:.0f} MiB, "
              f"{step_s:.2f} s a step ({child.seconds:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
