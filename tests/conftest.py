"""Shared fixtures: the real package config shrunk for speed, and the shared real datasets.

``make test`` runs the suite in one pytest-xdist worker per core (``-n auto --dist
loadgroup``). Each worker's torch gets its share of the cores, and every test that uses a
fixture made once per module or session runs on the worker that made it.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

# Before torch loads: two workers with a thread per core each would run four threads on two
# cores. OMP_NUM_THREADS also reaches the subprocesses the tests start.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(
        1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

from dorl.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


def _shared_fixtures(path: Path) -> frozenset[str]:
    """The names of the fixtures a test file defines with module or session scope, read from
    its source (pytest's own record of them is private)."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            if isinstance(decorator, ast.Call) and ast.unparse(decorator.func) == "pytest.fixture":
                scope = next((k.value for k in decorator.keywords if k.arg == "scope"), None)
                if isinstance(scope, ast.Constant) and scope.value in ("module", "session"):
                    names.add(node.name)
    return frozenset(names)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items):
    """Put each test that uses a shared fixture of this suite (module or session scope) in that
    fixture's xdist group, so that the fixture is made once, not once per worker."""
    here = Path(__file__)
    in_conftest = _shared_fixtures(here)
    by_file: dict[Path, frozenset[str]] = {}
    for item in items:
        path = Path(item.path)
        own = by_file.setdefault(path, _shared_fixtures(path) if path != here else frozenset())
        shared = sorted(f"{path.stem if name in own else 'conftest'}::{name}"
                        for name in item.fixturenames if name in own or name in in_conftest)
        if shared:
            item.add_marker(pytest.mark.xdist_group("+".join(shared)))


@pytest.fixture
def shared_datasets() -> Path:
    """The real datasets beside the repo; the test is skipped when they are absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


def tiny_config(root: Path, *overrides: str):
    """The real default config (configs/default.yaml over the package defaults), shrunk to run
    in seconds: a tiny random-init SAM, few images and epochs, outputs under ``root``."""
    return load_config(REPO / "configs" / "default.yaml", [
        f"run_dir={root / 'run'}",
        f"data.root={root / 'data'}",
        "data.synth.n_per_domain=24",
        "data.synth.image_size=64",
        "sam.backbone=tiny",
        "sam.image_size=64",
        "sam.finetune.epochs=1",
        "sam.finetune.batch_size=8",
        "sam.finetune.max_images=32",
        "sam.infer.batch_size=16",
        "sam.infer.stored_crop_size=32",
        "features.crop_size=32",
        "features.adabn_cells=16",
        "cae.epochs=2",
        "cae.batch_per_domain=8",
        "classify.n_folds=2",
        "classify.classifiers=[logreg,knn]",
        "umap.n_neighbors=5",
        # The tiny SAM has random weights: every mask falls back to a centre crop.
        "qc.fail_on_fallback=false",
        *overrides,
    ])


@pytest.fixture
def tiny_cfg(tmp_path):
    """:func:`tiny_config` under ``tmp_path``."""
    return tiny_config(tmp_path)


@dataclass(frozen=True)
class FinishedRun:
    """A tiny run made once per test session through the command line, as a user makes one:
    ``data prepare``, ``embed``, ``classify run``, ``classify predict`` (its logistic
    regression on the run's own cells) and ``umap`` with those predictions. ``codes`` holds each
    command's exit status."""

    config: Path
    run_dir: Path
    predictions: Path
    codes: dict


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> FinishedRun:
    from omegaconf import OmegaConf

    from dorl.cli import main

    root = tmp_path_factory.mktemp("finished")
    run, predictions = root / "run", root / "predictions.csv"
    config = root / "tiny.yaml"
    # One adaptation and protocol: every report of a full classify run is tested on its own
    # (tests/test_evaluation.py); this run's results feed the commands after it.
    OmegaConf.save(tiny_config(root, f"umap.predictions={predictions}",
                               "classify.adaptations=[none]",
                               "classify.protocols=[source_target]"), config)
    codes = {}
    for name, argv in (
            ("data", ["data", "prepare"]), ("embed", ["embed"]),
            ("classify", ["classify", "run"]),
            ("predict", ["classify", "predict", "--model",
                         str(run / "classify" / "models" / "dorl__logreg.skops"),
                         "--features", str(run / "features.h5ad"), "--out", str(predictions)]),
            ("umap", ["umap"])):
        codes[name] = main([*argv, "-c", str(config)])
        if codes[name] != 0:
            break
    return FinishedRun(config, run, predictions, codes)


@pytest.fixture(scope="session")
def autoencoder_run(tmp_path_factory):
    """A tiny run of all three labs with the autoencoder trained (:func:`tiny_config` with
    ``cae.enabled=true``), made once per session, and lab c's manifest as a new lab
    (``data.root/new_c.csv``). Its config is returned; tests change a copy of it, and tests that
    damage the run work on a copy of the folder."""
    from dorl.data.manifest import save_manifest
    from dorl.data.synth.generate import generate_from_config
    from dorl.pipeline.embed import run_embed

    root = tmp_path_factory.mktemp("autoencoder_run")
    cfg = tiny_config(root, "cae.enabled=true")
    table = generate_from_config(cfg).table
    save_manifest(table[table["domain"] == "lab_c"], root / "data" / "new_c.csv")
    run_embed(cfg)
    return cfg
