"""Peak memory and time of one training step of the cross-domain encoder, with the batch
backpropagated at once and one lab at a time (``cae.backward_per_lab``).

Each variant runs in a child process of its own (its peak RSS from ``os.wait4``): four steps
(forward, backward, AdamW) on two views of ``--per-lab`` random crops of three labs at
``features.crop_size``; the best of the last three is the step's time.

    python bench/bench_cae_memory.py [--per-lab 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys

from measure import step_child

STEP = """
import time, numpy as np, torch
from dorl.cae.losses import compute_losses
from dorl.cae.settings import CAESettings
from dorl.cae.train import _backward_lab_by_lab, _by_domain, build_autoencoder
from dorl.config import load_config
torch.set_num_threads({threads})
settings = CAESettings.from_config(load_config(None, []))
model = build_autoencoder(settings, 5).train()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
side = settings.crop_size
domains = np.repeat([0, 1, 2], {per_lab})
both = np.concatenate([domains, domains])
pixels = torch.rand(len(both), 3, side, side) * 255
labels = torch.full((len(domains),), -1)
def losses(out):
    return compute_losses(out, pixels, labels, domains, settings)
seconds = []
for _ in range(4):
    t0 = time.perf_counter()
    optimizer.zero_grad()
    if {per_lab_backward}:
        _backward_lab_by_lab(model, pixels, both, losses, 1.0)
    else:
        losses(_by_domain(model, pixels, both))["total"].backward()
    optimizer.step()
    seconds.append(time.perf_counter() - t0)
print(min(seconds[1:]))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-lab", type=int, default=16, help="cells of each of the 3 labs")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    for per_lab_backward in (False, True):
        code = STEP.format(threads=args.threads, per_lab=args.per_lab,
                           per_lab_backward=per_lab_backward)
        child, step_s = step_child(code)
        print(f"backward_per_lab={per_lab_backward}: peak RSS {child.peak_rss_mib:.0f} MiB, "
              f"{step_s:.2f} s a step ({child.seconds:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
