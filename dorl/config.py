"""Configuration: package defaults, a YAML file of deltas, and ``key=value`` overrides, merged."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

from omegaconf import DictConfig, OmegaConf

from dorl.errors import InputError

logger = logging.getLogger(__name__)


#: Mappings whose keys are the user's own names (feature sets, classifiers, classes): new keys
#: are allowed there, while everywhere else an unknown key is a typo and is refused.
OPEN_MAPPINGS = ("classify.features", "classify.obsm", "classify.params", "classify.custom",
                 "data.synth.class_weights")


#: Keys that take values of more than one type: ``auto``, true or false; a name or a side in
#: pixels. Every other key takes the type of its package default (an integer key no fraction,
#: a number key an integer or a fraction); a key whose default is null takes any value.
MIXED_TYPES = {"sam.infer.bf16": (str, bool), "features.bf16": (str, bool),
               "features.resolution": (str, int),
               # "all", "auto" or a number of source cells per labelled target cell (a list of
               # them for the candidates).
               "classify.shot_training.source_per_shot": (str, int, float),
               "classify.shot_training.candidates": (str, int, float)}

#: The valid range of numeric keys, bounds included (None: unbounded); a list's numbers are
#: checked one by one. Checked when a config loads, so that a bad value stops a command before
#: any work. Keys whose range a stage's settings check already (``QCSettings``,
#: ``SegmentSettings``, ``ClassifySettings``, ``CAESettings``, the synthetic generator) are
#: not repeated here.
NUMBER_RANGES = {
    "seed": (0, None), "num_threads": (1, None),
    "sam.box_fraction": (0.01, 1.0), "sam.lora.rank": (1, None), "sam.lora.dropout": (0.0, 0.99),
    "sam.finetune.epochs": (1, None), "sam.finetune.batch_size": (1, None),
    "sam.finetune.weight_decay": (0.0, None), "sam.finetune.warmup_epochs": (0.0, None),
    "sam.finetune.val_fraction": (0.0, 0.9), "sam.finetune.max_images": (1, None),
    "sam.infer.stored_crop_size": (8, None),
    "sam.infer.min_area_frac": (0.0, 1.0), "sam.infer.max_border_frac": (0.0, 1.0),
    "sam.eval.max_images": (1, None), "sam.eval.n_overlays": (0, None),
    "data.synth.fields_per_domain": (0, None), "data.synth.fields_grid": (1, None),
    # EfficientNet's last feature map is 1/32 of its input.
    "features.crop_size": (32, None), "features.adabn_cells": (1, None),
    "features.batch_size": (1, None),
    "qc.stain_od": (0.0, None),
    "cae.weight_decay": (0.0, None), "cae.lr_warmup_epochs": (0.0, None),
    "classify.n_folds": (2, None), "classify.seeds": (0, None),
    "classify.max_train_cells": (1, None), "classify.kernel_svm_max_train": (1, None),
    "classify.min_class_count": (1, None),
    "classify.self_training.min_confidence": (0.0, 1.0),
    "umap.n_neighbors": (2, None), "umap.min_dist": (0.0, None), "umap.html_max_cells": (1, None),
    "umap.thumbnail_px": (8, None),
}
#: Keys that no longer exist, with what to do instead: a config that still sets one is refused
#: naming it (never silently ignored). docs/removed.md says why each went.
REMOVED_KEYS = {
    "sam.finetune.synth_images": "synthetic training cells gave no gain on real data; delete "
                                 "the key",
    "sam.finetune.synth_domains": "it chose the presets of sam.finetune.synth_images, also "
                                  "removed; delete the key",
    "sam.infer.crop_size": "renamed sam.infer.stored_crop_size (features.crop_size is the "
                           "embedding's)",
    "umap.features": "renamed umap.feature_file (features is the embedding's settings)",
    "features.stain": "stain normalisation (Reinhard, Macenko, grey) lost to none in the "
                      "encoder benchmarks; the trained encoder's stain views replace it",
    "features.stain_reference_domains": "it chose the reference of features.stain, also "
                                        "removed; delete the key",
    "features.multilevel": "the last stages' pooled outputs did not pay in the encoder "
                           "benchmarks; delete the key",
}
#: Numeric keys that must be above zero.
POSITIVE = ("sam.lora.alpha", "sam.finetune.lr", "cae.lr", "cae.head_lr")


#: A config holds deltas over the defaults: a few kilobytes. Larger files are refused unread.
MAX_CONFIG_BYTES = 1024 ** 2


class ConfigError(InputError, ValueError):
    """A config file or override is malformed or names a key that does not exist."""


def package_defaults() -> DictConfig:
    """Return the package defaults (``dorl/defaults.yaml``) as a struct-mode config."""
    text = resources.files("dorl").joinpath("defaults.yaml").read_text(encoding="utf-8")
    return OmegaConf.create(text)


_ABSENT = object()


def _refuse_removed_keys(origin: str, layer: DictConfig) -> None:
    for key, instead in REMOVED_KEYS.items():
        if OmegaConf.select(layer, key, default=_ABSENT) is not _ABSENT:
            raise ConfigError(f"{origin}: {key} was removed ({instead}; docs/removed.md)")


def load_config(path: str | Path | Sequence[str | Path] | None = None,
                overrides: Iterable[str] = ()) -> DictConfig:
    """Merge defaults, then the file(s) at ``path`` (deltas only, in order), then overrides.

    Unknown keys are refused so that a typo never silently falls back to a default.

    Parameters
    ----------
    path : str, Path or sequence of them, optional
        YAML files holding only the keys that differ from the package defaults; later files
        win (e.g. a data config, then a hardware config).
    overrides : iterable of str
        Dotted ``key=value`` strings, e.g. ``["seed=3", "cae.epochs=2"]``.

    Returns
    -------
    DictConfig
        The merged config (interpolations unresolved until accessed), in struct mode: only
        the user-named mappings (``classify.features``, ...) take new keys.
    """
    # Each merge returns a new config: ``defaults`` keeps the package values for check_values.
    cfg = defaults = package_defaults()
    OmegaConf.set_struct(cfg, True)
    for key in OPEN_MAPPINGS:
        OmegaConf.set_struct(OmegaConf.select(cfg, key), False)
    layers = []
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    for file in map(Path, paths):
        if not file.is_file():
            raise ConfigError(f"config file not found: {file}")
        if file.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{file}: {file.stat().st_size:,} bytes, more than a config file "
                              f"may hold ({MAX_CONFIG_BYTES:,})")
        try:  # OmegaConf bounds how far YAML aliases may expand (a "billion laughs" file)
            layers.append((str(file), OmegaConf.load(file)))
        except Exception as exc:  # yaml errors come in many types
            message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            raise ConfigError(f"cannot parse config file {file}: {message}") from exc
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
    for item in overrides:
        try:  # a YAML tag in a value is refused here as it is in a file
            layers.append(("command line", OmegaConf.from_dotlist([item])))
        except Exception as exc:
            raise ConfigError(f"cannot parse override {item!r}: "
                              f"{str(exc).splitlines()[0]}") from exc
    for origin, layer in layers:
        _refuse_removed_keys(origin, layer)
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except Exception as exc:
            # OmegaConf's message spans lines (key, type, ...): one line, naming the full key.
            key = getattr(exc, "full_key", None)
            raise ConfigError(f"{origin}: {str(exc).splitlines()[0]}"
                              + (f" (key {key})" if key else "")) from exc
    check_values(cfg, defaults)
    # Struct mode stays on: a misspelt key assigned later is refused too, not added silently.
    return cfg


def _leaves(tree: dict, prefix: str = ""):
    """(dotted key, value) of every value of a nested dict that is not itself a dict."""
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            yield from _leaves(value, name)
        else:
            yield name, value


def _kind(value) -> str:
    """The type names of :func:`check_values`' messages."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    return {str: "a string", list: "a list"}.get(type(value), type(value).__name__)


def _has_kind(value, default) -> bool:
    """Whether ``value`` is of the kind of ``default``: true/false only for a boolean, an
    integer or a fraction for a number, else the default's own type."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def check_values(cfg: DictConfig, defaults: DictConfig) -> None:
    """Refuse a value of ``cfg`` of another type than its key's value in ``defaults`` (the
    package defaults), or outside its range (:data:`MIXED_TYPES`, :data:`NUMBER_RANGES`,
    :data:`POSITIVE`).

    Raises
    ------
    ConfigError
        One line naming the key, what it takes and the value given.
    """
    try:
        values = OmegaConf.to_container(cfg, resolve=True)
        defaults = OmegaConf.to_container(defaults, resolve=True)
    except Exception as exc:  # an interpolation to a missing key
        raise ConfigError(f"config: {str(exc).splitlines()[0]}") from exc
    given = dict(_leaves(values))
    for key, default in _leaves(defaults):
        value = given.get(key)
        if value is None or default is None:
            continue
        if key in MIXED_TYPES:
            ok = all(isinstance(v, MIXED_TYPES[key]) and not (
                isinstance(v, bool) and bool not in MIXED_TYPES[key])
                for v in (value if isinstance(value, list) else [value]))
            if not ok:
                kinds = " or ".join(_kind(t()) for t in MIXED_TYPES[key])
                raise ConfigError(f"{key} must be {kinds}, got {value!r}")
            continue
        items = value if isinstance(value, list) else [value]
        samples = default if isinstance(default, list) else [default]
        if not _has_kind(value, default) or (samples and not all(
                _has_kind(v, samples[0]) for v in items)):
            wanted = _kind(default) if not isinstance(default, list) or not default else \
                f"a list of {_kind(samples[0]).split(' ', 1)[-1]}s"
            raise ConfigError(f"{key} must be {wanted} (default {default!r}), got {value!r}")
    for key, (low, high) in NUMBER_RANGES.items():
        for value in _numbers(given.get(key)):
            if (low is not None and value < low) or (high is not None and value > high):
                bounds = f"from {low} to {high}" if high is not None else f">= {low}"
                raise ConfigError(f"{key} must be {bounds}, got {given[key]!r}")
    for key in POSITIVE:
        if any(value <= 0 for value in _numbers(given.get(key))):
            raise ConfigError(f"{key} must be > 0, got {given[key]!r}")


def _numbers(value) -> list:
    """The numbers of a config value (none for null)."""
    items = [] if value is None else value if isinstance(value, list) else [value]
    return [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]


def resolved_yaml(cfg: DictConfig) -> str:
    """Return the config with every interpolation resolved, as YAML text."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def save_resolved(cfg: DictConfig, run_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config into ``run_dir`` and return its path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / name
    out.write_text(resolved_yaml(cfg), encoding="utf-8")
    logger.info("resolved config written to %s", out)
    return out
