"""The classify stage's settings, unpacked once from the config by
:meth:`ClassifySettings.from_config`; the run and the report writers take these frozen values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf


@dataclass(frozen=True)
class ClassifySettings:
    """What fitting, scoring and reporting read; see the ``classify`` section of
    dorl/defaults.yaml. ``section`` is the whole resolved section, kept for the provenance
    written into ``summary.json``."""

    classifiers: tuple[str, ...]
    protocols: tuple[str, ...]
    n_folds: int
    seeds: tuple[int, ...]
    max_train_cells: int | None
    min_class_count: int
    n_jobs: int
    save_models: bool
    sources: tuple[str, ...] = ()
    params: dict[str, dict] = field(default_factory=dict)
    custom: dict[str, dict] = field(default_factory=dict)
    seed: int = 0
    section: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg) -> "ClassifySettings":
        c = cfg.classify
        return cls(
            classifiers=tuple(str(x) for x in c.classifiers),
            protocols=tuple(str(p) for p in c.protocols), n_folds=int(c.n_folds),
            seeds=tuple(int(s) for s in c.seeds),
            max_train_cells=None if c.max_train_cells is None else int(c.max_train_cells),
            min_class_count=int(c.min_class_count), n_jobs=int(c.n_jobs),
            save_models=bool(c.save_models), sources=tuple(str(s) for s in c.sources),
            params=OmegaConf.to_container(c.params, resolve=True) or {},
            custom=OmegaConf.to_container(c.custom, resolve=True) or {},
            seed=int(cfg.seed), section=OmegaConf.to_container(c, resolve=True))
