"""Peak memory of refusing hostile files: a small TIFF that declares a huge image, and a small
model file that expands to gigabytes (a zip bomb).

Each case runs the real command line in a fresh process (``python -m dorl``), so its peak
resident memory is the child's own; the refusal's exit status and line are printed beside it.

    python bench/bench_hostile_files.py [--out runs/hostile] [--bomb-gib 3]

The TIFF goes through the image reader every stage uses; the archive through
``dorl classify predict``.
"""

from __future__ import annotations

import argparse
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from measure import python_child


def huge_tiff(path: Path, side: int = 30000) -> Path:
    """A 16x16 RGB TIFF whose header declares ``side`` x ``side`` pixels."""
    tifffile.imwrite(path, np.zeros((16, 16, 3), np.uint8))
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        fields = [(tags[name].valueoffset, int(tags[name].dtype))
                  for name in ("ImageWidth", "ImageLength")]
    data = bytearray(path.read_bytes())
    for offset, kind in fields:
        fmt = "<H" if kind == 3 else "<I"
        struct.pack_into(fmt, data, offset, min(side, 65535) if kind == 3 else side)
    path.write_bytes(bytes(data))
    return path


def zip_bomb(path: Path, gib: float) -> Path:
    """A model-named archive whose one member expands to ``gib`` GiB of zeros."""
    chunk = bytes(64 * 1024 ** 2)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("schema.json", "w", force_zip64=True) as member:
            for _ in range(int(gib * 16)):
                member.write(chunk)
    return path


def features(path: Path) -> Path:
    from dorl.featstore import FeatureSet, write_features

    obs = pd.DataFrame({"path": [f"{i}.png" for i in range(8)], "domain": ["a", "b"] * 4,
                        "label": ["monocyte", "basophil"] * 4}, index=[str(i) for i in range(8)])
    return write_features(path, FeatureSet(np.zeros((8, 3), np.float32), obs))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/hostile")
    ap.add_argument("--bomb-gib", type=float, default=3.0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tiff = huge_tiff(out / "huge.tif")
    bomb = zip_bomb(out / "model.skops", args.bomb_gib)
    cases = {
        # The image reader every stage goes through (dorl embed reads each cell with it).
        "tiff": (tiff, ["-c", f"from dorl.data.images import read_rgb; read_rgb({str(tiff)!r})"]),
        "zip": (bomb, ["-m", "dorl", "classify", "predict", f"run_dir={out / 'run'}", "--model",
                       str(bomb), "--features", str(features(out / "f.h5ad")), "--out",
                       str(out / "p.csv")]),
    }
    for case, (path, command) in cases.items():
        child = python_child(command)
        lines = [line for line in child.stderr.splitlines() if line.strip()]
        print(f"{case}: file {path.stat().st_size / 1024 ** 2:.2f} MiB, exit {child.status}, "
              f"peak RSS {child.peak_rss_mib:.0f} MiB, {child.seconds:.1f} s\n  "
              f"{lines[-1] if lines else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
