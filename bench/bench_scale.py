"""Scale figures: peak memory of `dorl embed` against the number of cells, a killed embed that
resumes, and the classify and UMAP stages on a large feature file. Prints markdown tables.

Every stage runs as its own `python -m dorl` child process, so each peak RSS is that command's
alone (``os.wait4``). The embed runs use the random-init ``tiny`` SAM backbone at 64 px and no
fine-tuning, so that the model is not what dominates the memory curve.

    python bench/bench_scale.py embed --cells 1200 12000       # memory curve
    python bench/bench_scale.py resume --cells 1200            # SIGKILL mid-segmentation, rerun
    python bench/bench_scale.py ranks --cells 1200             # 1 process vs torchrun x 2, 3 seeds
    python bench/bench_scale.py stage2 --cells 100000          # classify + umap at 100,000 x 50
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from bench_classify import synthetic_file  # noqa: E402
from measure import python_child  # noqa: E402

#: The embed runs' settings (tiny random-init SAM, 64 px, no fine-tuning, 3 labs). One view
#: per cell instead of the default four: the views of a batch are encoded together, so they
#: change the time, not the memory curve.
TINY = {"sam": {"backbone": "tiny", "image_size": 64, "finetune": {"enabled": False},
                "infer": {"stored_crop_size": 32}},
        "features": {"crop_size": 64, "adabn_cells": 200, "tta": 1},
        "data": {"synth": {"image_size": 64}}, "num_threads": 2}


def run_child(argv: list[str], kill_when=None, module: str = "dorl"
              ) -> tuple[int, float, float]:
    """Run ``python -m dorl argv``; return its exit status, seconds and peak RSS (MiB).

    ``kill_when`` is polled every 0.2 s; when it returns True the child gets SIGKILL. With
    ``module="torch.distributed.run"``, ``argv`` is torchrun's, each worker gets one thread, and
    the peak RSS is that of the largest process (Linux counts reaped descendants in it).
    """
    env = {**os.environ, "HDF5_USE_FILE_LOCKING": "FALSE"}
    if module != "dorl":
        env["OMP_NUM_THREADS"] = "1"
    child = python_child(["-m", module, *argv], env=env, kill_when=kill_when)
    return child.status, child.seconds, child.peak_rss_mib


def write_config(folder: Path, cells: int, seed: int = 0) -> Path:
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg["run_dir"] = str(folder / "run")
    cfg["seed"] = seed
    cfg["data"].update(root=str(folder / "data"))
    cfg["data"]["synth"]["n_per_domain"] = cells // 3
    path = folder / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def embed_curve(sizes: list[int], work: Path) -> None:
    print("| cells | `dorl embed` seconds | cells/s | peak RSS (MiB) |\n|---|---|---|---|")
    for n in sizes:
        folder = work / f"embed_{n}"
        folder.mkdir(parents=True, exist_ok=True)
        cfg = write_config(folder, n)
        run_child(["data", "synth", "-c", str(cfg)])
        code, seconds, rss = run_child(["embed", "-c", str(cfg)])
        print(f"| {n} | {seconds:.1f} | {n / seconds:.1f} | {rss:.0f} |"
              + ("" if code == 0 else f" (exit {code})"), flush=True)


def _rows_done(store: Path) -> int:
    try:
        with h5py.File(store, "r") as f:
            return int(f.attrs.get("done", 0))
    except (OSError, KeyError):
        return 0


def resume(n: int, work: Path) -> None:
    from dorl.featstore import read_features

    whole, killed = work / "whole", work / "killed"
    for folder in (whole, killed):
        folder.mkdir(parents=True, exist_ok=True)
        cfg = write_config(folder, n)
        run_child(["data", "synth", "-c", str(cfg)])
    code, seconds, _ = run_child(["embed", "-c", str(whole / "cfg.yaml")])
    store = killed / "run" / "segmentation.h5"
    half = n // 2
    kill_code, kill_s, _ = run_child(["embed", "-c", str(killed / "cfg.yaml")],
                                     kill_when=lambda: _rows_done(store) >= half)
    done = _rows_done(store)
    again_code, again_s, _ = run_child(["embed", "-c", str(killed / "cfg.yaml")])
    a = read_features(whole / "run" / "features.h5ad")
    b = read_features(killed / "run" / "features.h5ad")
    same = a.X.shape == b.X.shape and np.array_equal(a.X, b.X)
    print(f"uninterrupted embed: exit {code}, {seconds:.1f} s. Killed (SIGKILL, exit "
          f"{kill_code}) after {kill_s:.1f} s with {done} of {n} cells segmented; rerun: exit "
          f"{again_code}, {again_s:.1f} s. Features bit-identical to the uninterrupted run: "
          f"{same}")


#: The ``ranks`` runs: TINY with a short LoRA fine-tune and the autoencoder on, so that both
#: DDP trainings take part.
RANKS = {"sam": {"finetune": {"enabled": True, "epochs": 1, "max_images": 32}},
         "cae": {"enabled": True, "epochs": 5, "patience": 5, "image_size": 32}}


def _ranks_config(folder: Path, cells: int, seed: int, nproc: int) -> Path:
    path = write_config(folder, cells, seed)
    cfg = yaml.safe_load(path.read_text())
    for section, values in RANKS.items():
        for key, value in values.items():
            if isinstance(value, dict):
                cfg[section].setdefault(key, {}).update(value)
            else:
                cfg.setdefault(section, {})[key] = value
    cfg["num_threads"] = 2 // nproc  # the machine's two cores, shared by the ranks
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cae_figures(run: Path) -> dict[str, float]:
    from dorl.featstore import read_features

    uns = read_features(run / "features.h5ad", obsm=False).uns
    emb = uns["invariance"]["embedding"]
    return {"val reconstruction": uns["cae_training"]["best_val_reconstruction"],
            "cross-domain macro-F1": emb["cross_domain_macro_f1"],
            "domain classifier": emb["domain_clf_acc"]}


def ranks(n: int, work: Path, seeds: list[int]) -> None:
    """One process against ``torchrun --nproc_per_node 2`` on the same cells, each for every
    seed: wall time, the segmentation's agreement (first seed), and the CAE's figures of the two
    over the seeds."""
    rows = []
    for nproc in (1, 2):
        for seed in seeds:
            folder = work / f"ranks_{nproc}_{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            cfg = _ranks_config(folder, n, seed, nproc)
            if not (work / "data" / "manifest.csv").is_file():
                run_child(["data", "synth", "-c", str(cfg), f"data.root={work / 'data'}"])
            argv = ["embed", "-c", str(cfg), f"data.root={work / 'data'}"]
            if nproc > 1:
                code, seconds, rss = run_child(["--nproc_per_node", str(nproc), "-m", "dorl",
                                                *argv], module="torch.distributed.run")
            else:
                code, seconds, rss = run_child(argv)
            rows.append((nproc, seed, code, seconds, rss, folder / "run"))
    print("| processes | seed | `dorl embed` seconds | peak RSS, largest process (MiB) | "
          "CAE val reconstruction | cross-domain macro-F1 | domain classifier |\n"
          "|---|---|---|---|---|---|---|")
    figures = {}
    for nproc, seed, code, seconds, rss, run in rows:
        fig = _cae_figures(run) if code == 0 else {}
        figures[(nproc, seed)] = fig
        print(f"| {nproc} | {seed} | {seconds:.1f} | {rss:.0f} | "
              + " | ".join(f"{fig.get(k, float('nan')):.4f}" for k in
                           ("val reconstruction", "cross-domain macro-F1", "domain classifier"))
              + " |" + ("" if code == 0 else f" (exit {code})"), flush=True)
    one, two = rows[0][-1], rows[len(seeds)][-1]
    with h5py.File(one / "segmentation.h5") as a, h5py.File(two / "segmentation.h5") as b:
        same = {k: bool(np.array_equal(a[k][()], b[k][()]))
                for k in ("masks", "boxes", "fallback", "crops")}
        diff = float(np.abs(a["features/sam_pooled"][()] - b["features/sam_pooled"][()]).max())
    print(f"\nseed {seeds[0]}, 1 vs 2 processes: identical {same}; SAM pooled features max "
          f"|difference| {diff:.2e}")
    for key in ("val reconstruction", "cross-domain macro-F1", "domain classifier"):
        spread = {}
        for nproc in (1, 2):
            values = [figures[(nproc, s)][key] for s in seeds if figures.get((nproc, s))]
            spread[nproc] = (f"{np.mean(values):.4f} ± {np.std(values):.4f} "
                             f"({min(values):.4f} to {max(values):.4f})" if values else "-")
        print(f"{key} over seeds {seeds}: 1 process {spread[1]}; 2 processes {spread[2]}")


def stage2(n: int, work: Path) -> None:
    path = synthetic_file(work / f"features_{n}.h5ad", n, 50, 3, 3.0, 0)
    run_dir = work / "stage2"
    print(f"| stage ({n} cells x 50) | seconds | peak RSS (MiB) |\n|---|---|---|")
    for argv in (["classify", "run"], ["umap"]):
        code, seconds, rss = run_child([*argv, f"run_dir={run_dir}",
                                        f"classify.features={{dorl: {path}}}",
                                        f"umap.feature_file={path}"])
        print(f"| `dorl {' '.join(argv)}` | {seconds:.1f} | {rss:.0f} |"
              + ("" if code == 0 else f" (exit {code})"), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["embed", "resume", "ranks", "stage2"])
    ap.add_argument("--cells", type=int, nargs="+", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="ranks: the seeds each of the 1- and 2-process runs is made with")
    ap.add_argument("--work", help="working folder (default: a temporary one)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        print(f"{args.what}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        if args.what == "embed":
            embed_curve(args.cells, work)
        elif args.what == "resume":
            resume(args.cells[0], work)
        elif args.what == "ranks":
            ranks(args.cells[0], work, args.seeds)
        else:
            stage2(args.cells[0], work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
