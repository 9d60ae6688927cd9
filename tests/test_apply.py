"""A new lab: embed its cells with a finished run (`dorl apply`), then predict on them."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from dorl.classify.predict import predict_file
from dorl.cli import main
from dorl.config import ConfigError, load_config
from dorl.data.manifest import save_manifest
from dorl.data.synth.generate import generate_from_config
from dorl.device import get_device, resolve_bf16
from dorl.featstore import FeatureFileError, read_features
from dorl.pipeline.apply import NEW_DOMAIN_MIN_CELLS, SourceRun, applied_config, apply_run
from dorl.pipeline.embed import run_embed
from tests.conftest import tiny_config


@pytest.fixture
def labs(tiny_cfg, tmp_path):
    """The three synthetic labs (``manifest.csv``), and lab c's cells alone (``new_c.csv``)."""
    table = generate_from_config(tiny_cfg).table
    root = tmp_path / "data"
    save_manifest(table[table["domain"] == "lab_c"], root / "new_c.csv")
    return root


def _cfg(tiny_cfg, run_dir, manifest, *overrides):
    cfg = copy.deepcopy(tiny_cfg)
    for key, value in (("run_dir", str(run_dir)), ("data.manifest", str(manifest))):
        OmegaConf.update(cfg, key, value)
    for item in overrides:
        key, value = item.split("=", 1)
        OmegaConf.update(cfg, key, OmegaConf.create({"v": value}).v)
    return cfg


def _new_lab(finished_cfg, tmp_path):
    """The config of lab c's cells as a new lab, embedded into ``tmp_path / "lab_c"``."""
    manifest = Path(finished_cfg.data.root) / "new_c.csv"
    if not manifest.is_file():
        table = pd.read_csv(finished_cfg.data.manifest)
        save_manifest(table[table["domain"] == "lab_c"], manifest)
    return tiny_config(tmp_path, f"run_dir={tmp_path / 'lab_c'}", f"data.manifest={manifest}")


def test_applied_cells_match_the_same_cells_embedded_in_the_run(finished_run, tmp_path):
    run = load_config(finished_run.config)
    trained = read_features(finished_run.run_dir / "features.h5ad")
    applied = read_features(apply_run(finished_run.run_dir, _new_lab(run, tmp_path)))
    same = trained.domains == "lab_c"
    # The precision the run's features were made at, for a new lab applied elsewhere.
    assert bool(trained.uns["cell_features"]["bf16"]) == resolve_bf16("auto", get_device("cpu"))
    assert int(trained.uns["cell_features"]["torch_threads"]) == torch.get_num_threads()
    # Per-domain statistics come from each domain's own cells: lab c alone gives the same ones.
    np.testing.assert_allclose(applied.X, trained.X[same], atol=1e-4)
    assert applied.uns["applied_from"]["signature"] == dict(trained.uns["signature"])
    assert {k: v for k, v in applied.uns["signature"].items() if k != "data"} == \
        {k: v for k, v in trained.uns["signature"].items() if k != "data"}
    model = finished_run.run_dir / "classify" / "models" / "dorl__logreg.skops"
    on_run = pd.read_csv(predict_file(model, finished_run.run_dir / "features.h5ad",
                                      tmp_path / "run.csv"))
    on_new = pd.read_csv(predict_file(model, tmp_path / "lab_c" / "features.h5ad",
                                      tmp_path / "new.csv"))
    expected = on_run[on_run["domain"] == "lab_c"]["predicted"].to_numpy()
    np.testing.assert_array_equal(on_new["predicted"].to_numpy(), expected)


def test_cells_applied_with_the_adapted_encoder_match_the_run(autoencoder_run, tmp_path):
    trained = read_features(Path(autoencoder_run.run_dir) / "features.h5ad")
    assert "cae_training" in trained.uns
    applied = read_features(apply_run(autoencoder_run.run_dir,
                                      _new_lab(autoencoder_run, tmp_path)))
    np.testing.assert_allclose(applied.X, trained.X[trained.domains == "lab_c"], atol=1e-4)
    assert applied.uns["applied_from"]["signature"] == dict(trained.uns["signature"])
    assert not (tmp_path / "lab_c" / "cae").exists()  # nothing was trained


@pytest.mark.parametrize("native", [True, False])
def test_a_new_lab_is_embedded_at_the_run_s_precision(tiny_cfg, tmp_path, monkeypatch, native):
    """A run embedded where bfloat16 is native (auto: on) applied on a machine without it, and
    the other way round: the new lab is computed at the run's precision."""
    monkeypatch.setattr("dorl.device._cpu_has_native_bf16", lambda: native)
    user = copy.deepcopy(tiny_cfg)
    user.run_dir = str(tmp_path / "new_lab")
    recorded = {"segmentation": {"bf16": not native}, "cell_features": {"bf16": not native}}
    run = SourceRun(Path(tiny_cfg.run_dir), copy.deepcopy(tiny_cfg), recorded, "", None, None)
    cfg = applied_config(run, user)
    assert cfg.features.bf16 is (not native) and cfg.sam.infer.bf16 is (not native)
    # Where auto resolves as it did for the run, the config is left as the run's.
    same = {"segmentation": {"bf16": native}, "cell_features": {"bf16": native}}
    run = SourceRun(Path(tiny_cfg.run_dir), copy.deepcopy(tiny_cfg), same, "", None, None)
    cfg = applied_config(run, user)
    assert cfg.features.bf16 == "auto" and cfg.sam.infer.bf16 == "auto"


def test_a_new_lab_is_seen_at_the_run_s_resolution(tiny_cfg, labs, tmp_path):
    # Crops larger than the coarsest side, so that the cells are resampled.
    run = _cfg(tiny_cfg, tmp_path / "run_all", labs / "manifest.csv",
               "features.resolution=coarsest", "features.crop_size=96")
    trained = read_features(run_embed(run))
    side = trained.uns["cell_features"]["resolution_side"]
    assert side < 96
    new = _cfg(tiny_cfg, tmp_path / "lab_c", labs / "new_c.csv")
    applied = read_features(apply_run(run.run_dir, new))
    assert OmegaConf.create(applied.uns["config"]).features.resolution == side
    same = trained.domains == "lab_c"
    np.testing.assert_allclose(applied.X, trained.X[same], atol=1e-4)


def test_new_lab_path_from_the_command_line(finished_run, tmp_path):
    new_yaml = tmp_path / "new.yaml"
    OmegaConf.save(_new_lab(load_config(finished_run.config), tmp_path), new_yaml)
    assert main(["apply", "--from", str(finished_run.run_dir), "-c", str(new_yaml)]) == 0
    new = tmp_path / "lab_c" / "features.h5ad"
    assert set(read_features(new).domains) == {"lab_c"}
    assert (tmp_path / "lab_c" / "config.apply.yaml").is_file()
    out = tmp_path / "pred.csv"
    model = finished_run.run_dir / "classify" / "models" / "dorl__logreg.skops"
    assert main(["classify", "predict", "-c", str(new_yaml), "--model", str(model),
                 "--features", str(new), "--out", str(out)]) == 0
    assert len(pd.read_csv(out)) == 24
    # Applying a second time reuses the finished file.
    stamp = new.stat().st_mtime_ns
    assert main(["apply", "--from", str(finished_run.run_dir), "-c", str(new_yaml)]) == 0
    assert new.stat().st_mtime_ns == stamp


def test_apply_refuses_what_it_cannot_do(autoencoder_run, tiny_cfg, tmp_path):
    labs = Path(autoencoder_run.data.root)
    with pytest.raises(FeatureFileError, match="no features.h5ad"):
        apply_run(tmp_path / "never_run", _cfg(tiny_cfg, tmp_path / "x", labs / "new_c.csv"))
    # A copy: the checks below damage the run's files.
    run_dir = tmp_path / "run_ab"
    shutil.copytree(autoencoder_run.run_dir, run_dir)
    with pytest.raises(ConfigError, match="applied run's own folder"):
        apply_run(run_dir, _cfg(tiny_cfg, run_dir, labs / "new_c.csv"))
    with pytest.raises(ConfigError, match="label space"):
        apply_run(run_dir, _cfg(tiny_cfg, tmp_path / "y", labs / "new_c.csv",
                                    "data.label_space=full"))
    table = pd.read_csv(labs / "new_c.csv")
    save_manifest(table.head(NEW_DOMAIN_MIN_CELLS - 1), labs / "few.csv")
    with pytest.raises(ConfigError, match=f"fewer than {NEW_DOMAIN_MIN_CELLS} cells"):
        apply_run(run_dir, _cfg(tiny_cfg, tmp_path / "z", labs / "few.csv"))
    assert not (tmp_path / "z" / "features.h5ad").exists()
    encoder = tmp_path / "run_ab" / "cae" / "encoder.pt"
    original = encoder.read_bytes()
    middle = len(original) // 2
    encoder.write_bytes(original[:middle] + bytes([original[middle] ^ 1]) + original[middle + 1:])
    with pytest.raises(FeatureFileError, match="adapted encoder .* was changed"):
        apply_run(run_dir, _cfg(tiny_cfg, tmp_path / "v", labs / "new_c.csv"))
    encoder.write_bytes(original)
    adapter = next((tmp_path / "run_ab" / "sam_adapter").glob("*.safetensors"))
    adapter.write_bytes(adapter.read_bytes()[:-1] + b"\0")
    with pytest.raises(FeatureFileError, match="adapter .* was changed"):
        apply_run(run_dir, _cfg(tiny_cfg, tmp_path / "w", labs / "new_c.csv"))
