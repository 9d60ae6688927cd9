"""Config merging: package defaults < config file deltas < command-line overrides."""

import pytest

from dorl.config import ConfigError, load_config, package_defaults, save_resolved
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
