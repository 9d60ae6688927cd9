"""Configuration: package defaults, a YAML file of deltas, and ``key=value`` overrides, merged."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

from omegaconf import DictConfig, OmegaConf

logger = logging.getLogger(__name__)


#: Mappings whose keys are the user's own names (feature sets, classifiers, classes): new keys
#: are allowed there, while everywhere else an unknown key is a typo and is refused.
OPEN_MAPPINGS = ("classify.features", "classify.obsm", "classify.params", "classify.custom",
                 "data.synth.class_weights")


class ConfigError(ValueError):
    """A config file or override is malformed or names a key that does not exist."""


def package_defaults() -> DictConfig:
    """Return the package defaults (``dorl/defaults.yaml``) as a struct-mode config."""
    text = resources.files("dorl").joinpath("defaults.yaml").read_text(encoding="utf-8")
    return OmegaConf.create(text)


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
    cfg = package_defaults()
    OmegaConf.set_struct(cfg, True)
    for key in OPEN_MAPPINGS:
        OmegaConf.set_struct(OmegaConf.select(cfg, key), False)
    layers = []
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    for file in map(Path, paths):
        if not file.is_file():
            raise ConfigError(f"config file not found: {file}")
        try:
            layers.append((str(file), OmegaConf.load(file)))
        except Exception as exc:  # yaml errors come in many types
            raise ConfigError(f"cannot parse config file {file}: {exc}") from exc
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
    if overrides:
        layers.append(("command line", OmegaConf.from_dotlist(overrides)))
    for origin, layer in layers:
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except Exception as exc:
            # OmegaConf's message spans lines (key, type, ...): one line, naming the full key.
            key = getattr(exc, "full_key", None)
            raise ConfigError(f"{origin}: {str(exc).splitlines()[0]}"
                              + (f" (key {key})" if key else "")) from exc
    # Struct mode stays on: a misspelt key assigned later is refused too, not added silently.
    return cfg


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
