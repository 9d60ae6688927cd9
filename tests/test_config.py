"""Config merging: package defaults < config file deltas < command-line overrides."""

import re
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from dorl.config import (
    NUMBER_RANGES,
    POSITIVE,
    ConfigError,
    load_config,
    package_defaults,
    save_resolved,
)
from tests.conftest import REPO


def test_defaults_load_and_resolve():
    cfg = package_defaults()
    assert cfg.seed == 0
    assert cfg.classify.features.dorl == "runs/default/features.h5ad"


def test_file_deltas_then_overrides(tmp_path):
    delta = tmp_path / "exp.yaml"
    delta.write_text("seed: 5\ncae:\n  epochs: 3\n")
    cfg = load_config(delta, ["cae.epochs=7", "run_dir=/x"])
    assert cfg.seed == 5  # from the file
    assert cfg.cae.epochs == 7  # the override wins over the file
    assert cfg.cae.batch_per_domain == 16  # untouched default
    assert cfg.classify.features.dorl == "/x/features.h5ad"  # interpolation follows run_dir


def test_config_files_layer_in_order(tmp_path):
    data, hardware = tmp_path / "data.yaml", tmp_path / "gpu.yaml"
    data.write_text("seed: 1\nsam:\n  image_size: 128\n")
    hardware.write_text("sam:\n  image_size: 224\n")
    cfg = load_config([data, hardware], ["seed=2"])
    assert cfg.sam.image_size == 224 and cfg.seed == 2


def test_user_named_maps_accept_new_keys():
    cfg = load_config(None, ["classify.features={dorl: a.h5ad, raw: a.h5ad}",
                             "classify.obsm={raw: X_sam_pooled}", "classify.params.rf.max_depth=8"])
    assert dict(cfg.classify.features) == {"dorl": "a.h5ad", "raw": "a.h5ad"}
    assert cfg.classify.params.rf.max_depth == 8


def test_unknown_key_is_refused(tmp_path):
    delta = tmp_path / "typo.yaml"
    delta.write_text("cae:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="epoch"):
        load_config(delta)
    with pytest.raises(ConfigError, match="sead"):
        load_config(None, ["sead=1"])


def test_malformed_inputs_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["seed"])


@pytest.mark.parametrize("override, message", [
    ("features.crop_size=-1", "features.crop_size must be >= 32, got -1"),
    ("features.adabn_cells=abc", "features.adabn_cells must be an integer (default 500)"),
    ("umap.min_dist=abc", "umap.min_dist must be a number"),
    ("classify.seeds=[x]", "classify.seeds must be a list of integers"),
    ("classify.seeds=[0,-1]", "classify.seeds must be >= 0"),
    ("classify.n_folds=1", "classify.n_folds must be >= 2"),
    ("classify.n_folds=2.5", "classify.n_folds must be an integer"),
    ("features.encoders=efficientnet_lite0", "features.encoders must be a list of strings"),
    ("cae.enabled=yes please", "cae.enabled must be true or false"),
    ("features.bf16=3", "features.bf16 must be a string or true or false"),
    ("sam.finetune.lr=0", "sam.finetune.lr must be > 0"),
    ("sam.infer.min_area_frac=1.5", "sam.infer.min_area_frac must be from 0.0 to 1.0"),
    ("seed=!!python/object/apply:os.system [ls]",
     "cannot parse override 'seed=!!python/object/apply:os.system [ls]': could not determine"),
    ("classify.shot_training.candidates=[all,true]",
     "classify.shot_training.candidates must be a string or an integer or a number"),
])
def test_a_value_of_the_wrong_type_or_range_is_refused_when_loaded(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


@pytest.mark.parametrize("override", [
    "features.bf16=true", "features.bf16=auto", "features.resolution=96",
    "features.resolution=coarsest", "qc.min_predicted_iou=0", "classify.max_train_cells=null",
    "num_threads=2", "cae.loss.mmd=1", "classify.few_shot.shots=[5]",
    "classify.shot_training.source_per_shot=auto", "classify.shot_training.candidates=[all,2]",
])
def test_values_of_the_key_s_kind_load(override):
    load_config(None, [override])


def test_every_range_names_a_numeric_key():
    defaults = package_defaults()
    for key in [*NUMBER_RANGES, *POSITIVE]:
        assert key in ("num_threads",) or OmegaConf.select(defaults, key) is not None, key


def test_a_bad_value_on_the_command_line_is_one_line_and_writes_nothing(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dorl", "embed", f"run_dir={tmp_path / 'run'}",
                           "features.crop_size=-1"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "features.crop_size must be >= 32, got -1"], done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_hold_only_known_keys(name):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.run_dir


def test_save_resolved_writes_plain_values(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}"])
    out = save_resolved(cfg, tmp_path)
    text = out.read_text()
    assert "${" not in text and str(tmp_path) in text


def test_null_feature_entry_is_left_out(tmp_path):
    from dorl.classify.run import inputs_from_config
    from dorl.featstore import FeatureFileError

    cfg = load_config(None, ["classify.features.dorl=null"])
    with pytest.raises(FeatureFileError, match="empty"):
        inputs_from_config(cfg)


def test_a_misspelt_key_assigned_after_loading_is_refused():
    cfg = load_config()
    with pytest.raises(Exception, match="epoch"):
        cfg.cae.epoch = 3
    cfg.cae.epochs = 3  # a known key takes a new value
    cfg.classify.features["mine"] = "x.h5ad"  # a user-named mapping takes new keys


@pytest.mark.parametrize("override", ["classify.shot_training.source_per_shot=many",
                                      "classify.shot_training.source_per_shot=-1",
                                      "classify.shot_training.candidates=[all,-2]",
                                      "classify.shot_training.candidates=[]"])
def test_the_classify_stage_refuses_a_shot_route_it_cannot_follow(override):
    from dorl.classify.settings import ClassifySettings

    with pytest.raises(ConfigError, match="classify.shot_training"):
        ClassifySettings.from_config(load_config(None, [override]))
