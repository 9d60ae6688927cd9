"""The house rules that a reading of the code can check: module size, and which functions may
take the whole config."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dorl"
MAX_MODULE_LINES = 400

#: Every function that takes the whole config (a parameter named ``cfg``), as ``module:function``.
#: A stage turns ``cfg`` into its typed settings at its entry point; below that, functions take
#: the settings or plain values. The list may only shrink: a function added to it is a function
#: that should take its settings instead. (Issue 37 aims at 12; the embed and SAM stages below
#: their entry points are what is left.)
TAKES_CFG = {
    "artifacts:parts", "artifacts:signature",
    "cae/settings:from_config", "classify/settings:from_config", "features/encode:from_config",
    "sam/inference:from_config", "sam/quality:from_config",
    "config:check_values", "config:resolved_yaml", "config:save_resolved",
    "cli:_apply", "cli:_classify_predict", "cli:_classify_run", "cli:_data_manifest",
    "cli:_data_prepare", "cli:_data_synth", "cli:_embed", "cli:_info", "cli:_sam_eval",
    "cli:_sam_finetune", "cli:_umap",
    "classify/run:classify_from_config", "classify/run:inputs_from_config",
    "data/readers:manifest_from_config", "data/synth/generate:generate_from_config",
    "features/encode:features_from_config", "info:describe",
    "pipeline/embed:_provenance", "pipeline/embed:check_settings",
    "pipeline/embed:embed_segmentation", "pipeline/embed:feature_signature",
    "pipeline/embed:finished", "pipeline/embed:load_data", "pipeline/embed:run_embed",
    "sam/evaluate:evaluate_from_config", "sam/finetune:finetune_from_config",
    "sam/finetune:finetune_signature", "sam/finetune_data:training_set",
    "sam/inference:load_model", "sam/inference:segment_from_config",
    "sam/inference:segmentation_signature", "sam/models:sam_from_config",
    "viz/umap:umap_from_config",
}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, path.relative_to(PACKAGE).with_suffix("").as_posix()


def test_every_module_is_at_most_400_lines():
    long = {name: n for path, name in _modules()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_only_the_listed_functions_take_the_whole_config():
    found = set()
    for path, name in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                if any(a.arg == "cfg" for a in arguments):
                    found.add(f"{name}:{node.name}")
    assert not found - TAKES_CFG, f"new functions take the whole config: {found - TAKES_CFG}"
    assert not TAKES_CFG - found, f"no longer take it, strike them: {TAKES_CFG - found}"
