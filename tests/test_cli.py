"""The command line: help, errors that name the problem, provenance written into the run."""

import json
import logging
import subprocess
import sys

import numpy as np
import yaml
from PIL import Image

from dorl.cli import main


def _choices(parser) -> dict:
    """The subcommand parsers of an argparse parser, by name."""
    import argparse

    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_stage_and_action_is_a_command():
    from dorl.cli import build_parser

    commands = _choices(build_parser())
    assert set(commands) == {"data", "sam", "embed", "apply", "classify", "umap", "info"}
    assert set(_choices(commands["data"])) == {"prepare", "synth", "manifest"}
    assert set(_choices(commands["sam"])) == {"finetune", "eval"}
    assert set(_choices(commands["classify"])) == {"run", "predict"}


def test_python_m_dorl_prints_help_and_version():
    proc = subprocess.run([sys.executable, "-m", "dorl", "--version"], capture_output=True,
                          text=True, check=True)
    from dorl import __version__

    assert proc.stdout.strip() == f"dorl {__version__}"
    proc = subprocess.run([sys.executable, "-m", "dorl", "embed", "--help"], capture_output=True,
                          text=True, check=True)
    assert "--config" in proc.stdout and "key=value" in proc.stdout


def test_bad_override_exits_with_message(tmp_path, caplog):
    assert main(["info", f"run_dir={tmp_path}", "cae.epoch=3"]) == 2
    assert "epoch" in caplog.text


def test_every_error_class_of_the_library_is_an_input_error():
    """The command line turns any of them into one line and exit 2, so none may be missed."""
    import importlib
    import inspect
    import pkgutil

    import dorl
    from dorl.errors import InputError

    found = []
    for info in pkgutil.walk_packages(dorl.__path__, "dorl."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (inspect.isclass(value) and issubclass(value, Exception)
                    and value.__module__ == info.name and value is not InputError):
                found.append(value)
                assert issubclass(value, InputError), f"{info.name}.{name}"
    assert len(found) >= 15


def test_ctrl_c_ends_in_one_line_and_exit_130(tmp_path, monkeypatch):
    from dorl import cli
    from tests.helpers import dorl_records

    def interrupted(args, cfg):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "info", interrupted)
    with dorl_records(logging.ERROR) as records:
        assert main(["info", f"run_dir={tmp_path / 'run'}"]) == 130
    errors = [r.getMessage() for r in records]
    assert errors == ["interrupted; what was finished is saved, and the same command resumes"]


def test_read_only_commands_leave_the_run_folder_unchanged(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("x")

    def snapshot():
        return {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}

    before = snapshot()
    assert main(["info", f"run_dir={run}", "--outputs"]) == 0
    assert main(["info", f"run_dir={tmp_path / 'absent'}"]) == 0
    assert snapshot() == before
    assert not (tmp_path / "absent").exists()


def test_unknown_classifier_exits_with_message(tmp_path):
    import pandas as pd

    from dorl.featstore import FeatureSet, write_features

    obs = pd.DataFrame({"path": [f"{i}.png" for i in range(40)], "domain": ["a", "b"] * 20,
                        "label": ["monocyte", "monocyte", "basophil", "basophil"] * 10},
                       index=[str(i) for i in range(40)])
    path = write_features(tmp_path / "f.h5ad", FeatureSet(np.zeros((40, 3), np.float32), obs))
    code = main(["classify", "run", f"run_dir={tmp_path}", "classify.classifiers=[forest]",
                 f"classify.features={{dorl: {path}}}"])
    assert code == 2 and "forest" in (tmp_path / "dorl.log").read_text()


def test_data_manifest_writes_provenance(tmp_path, caplog):
    for cls in ("monocyte", "basophil"):
        (tmp_path / "lab" / cls).mkdir(parents=True)
        arr = np.full((20, 20, 3), 10 if cls == "monocyte" else 200, np.uint8)
        Image.fromarray(arr).save(tmp_path / "lab" / cls / "1.png")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"),
        "data": {"root": str(tmp_path), "sources": [
            {"format": "class_folders", "path": str(tmp_path / "lab"), "domain": "lab"}]}}))
    assert main(["data", "prepare", "-c", str(cfg), "seed=7"]) == 0
    assert (tmp_path / "manifest.csv").is_file()
    run = tmp_path / "run"
    resolved = yaml.safe_load((run / "config.data.prepare.yaml").read_text())
    assert resolved["seed"] == 7
    versions = json.loads((run / "versions.data.prepare.json").read_text())
    assert "torch" in versions["versions"]
    assert "data signature" in (run / "dorl.log").read_text()


def test_missing_manifest_is_reported(tmp_path, caplog):
    code = main(["sam", "eval", f"run_dir={tmp_path}", f"data.manifest={tmp_path}/none.csv"])
    assert code == 2 and "manifest not found" in caplog.text


def test_overrides_reach_subcommands():
    from dorl.cli import build_parser

    args = build_parser().parse_args(["classify", "run", "-c", "x.yaml", "seed=1"])
    assert args.overrides == ["seed=1"] and args.config == ["x.yaml"]


def test_embed_classify_predict_umap_info_from_the_command_line(finished_run):
    import pandas as pd

    run = finished_run.run_dir
    assert finished_run.codes == {"data": 0, "embed": 0, "classify": 0, "predict": 0,
                                  "umap": 0}
    assert (run / "features.h5ad").is_file() and (run / "config.embed.yaml").is_file()
    results = (run / "classify" / "results.md").read_text()
    assert "macro" in results.lower()
    pred = pd.read_csv(finished_run.predictions)
    assert len(pred) == 72 and {"cell_id", "domain", "predicted"} <= set(pred.columns)
    assert (run / "umap" / "umap.png").is_file() and (run / "umap" / "umap.html").is_file()
    # umap stored its coordinates in the feature file after classify saved its models: the
    # embedding the models record is unchanged.
    from dorl.classify.model_files import load_model_bundle
    from dorl.featstore import read_features

    features = read_features(run / "features.h5ad")
    assert "X_umap" in features.obsm
    bundle = load_model_bundle(run / "classify" / "models" / "dorl__logreg.skops")
    assert bundle["embedding_sha256"] == features.embedding_sha256("X")


def test_info_and_predict_leave_a_finished_run_byte_for_byte_unchanged(finished_run, tmp_path):
    from tests.helpers import dorl_records

    run = finished_run.run_dir

    def snapshot():
        return {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}

    before = snapshot()
    with dorl_records() as records:
        assert main(["info", "--outputs", "-c", str(finished_run.config)]) == 0
    info = "\n".join(r.getMessage() for r in records)
    assert "features.h5ad" in info and "umap.png" in info
    assert main(["classify", "predict", "-c", str(finished_run.config), "--model",
                 str(run / "classify" / "models" / "dorl__logreg.skops"), "--features",
                 str(run / "features.h5ad"), "--out", str(tmp_path / "again.csv")]) == 0
    assert (tmp_path / "again.csv").read_bytes() == finished_run.predictions.read_bytes()
    assert snapshot() == before
