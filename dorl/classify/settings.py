"""The classify stage's settings, unpacked once from the config by
:meth:`ClassifySettings.from_config`; the run and the report writers take these frozen values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from dorl.classify.adaptation import ADAPTATIONS, SelfTraining
from dorl.classify.shots import ALL, AUTO, ShotTraining
from dorl.config import ConfigError


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
    kernel_svm_max_train: int | None = None
    adaptations: tuple[str, ...] = ("none",)
    adaptation_classifiers: tuple[str, ...] | None = None
    self_training: SelfTraining = SelfTraining()
    shots: tuple[int, ...] = (1, 5, 10, 25)
    draws: int = 5
    few_shot_classifiers: tuple[str, ...] = ("logreg",)
    shot_training: ShotTraining = ShotTraining()
    params: dict[str, dict] = field(default_factory=dict)
    custom: dict[str, dict] = field(default_factory=dict)
    seed: int = 0
    section: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        unknown = sorted(set(self.adaptations) - set(ADAPTATIONS))
        if unknown:
            raise ConfigError(f"classify.adaptations: unknown {unknown}; choose from "
                             f"{list(ADAPTATIONS)}")
        if any(k < 1 for k in self.shots) or self.draws < 1:
            raise ConfigError(f"classify.few_shot needs shots >= 1 and draws >= 1, got shots "
                             f"{list(self.shots)}, draws {self.draws}")
        if self.n_jobs == 0:
            raise ConfigError("classify.n_jobs must be a number of workers, or -1 for every core; "
                              "got 0")
        if not 0 < self.self_training.final_fraction <= 1 or self.self_training.rounds < 1:
            raise ConfigError(f"classify.self_training needs rounds >= 1 and 0 < final_fraction "
                             f"<= 1, got {self.self_training}")

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
            kernel_svm_max_train=None if c.kernel_svm_max_train is None
            else int(c.kernel_svm_max_train),
            adaptations=tuple(str(a) for a in c.adaptations),
            adaptation_classifiers=None if c.adaptation_classifiers is None
            else tuple(str(x) for x in c.adaptation_classifiers),
            self_training=SelfTraining(int(c.self_training.rounds),
                                       float(c.self_training.final_fraction),
                                       float(c.self_training.min_confidence)),
            shots=tuple(int(k) for k in c.few_shot.shots), draws=int(c.few_shot.draws),
            few_shot_classifiers=tuple(str(x) for x in c.few_shot.classifiers),
            shot_training=_shot_training(c.shot_training),
            params=OmegaConf.to_container(c.params, resolve=True) or {},
            custom=OmegaConf.to_container(c.custom, resolve=True) or {},
            seed=int(cfg.seed), section=OmegaConf.to_container(c, resolve=True))


def _ratio(key: str, value, also: str = "") -> float | None:
    """A source-per-shot ratio of ``classify.shot_training``: ``all`` (None) or a number >= 0;
    ``also`` names another accepted value in the message."""
    if value == ALL:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"classify.shot_training.{key} takes {ALL!r} (every source cell), "
                          f"{also}or a number of source cells per labelled target cell >= 0, got "
                          f"{value!r}")
    return float(value)


def _shot_training(section) -> ShotTraining:
    """Unpack and check ``classify.shot_training``."""
    candidates = tuple(_ratio("candidates", r) for r in section.candidates)
    if not candidates:
        raise ConfigError("classify.shot_training.candidates is empty: name at least one ratio")
    ratio = section.source_per_shot
    if ratio != AUTO:
        ratio = _ratio("source_per_shot", ratio, f"{AUTO!r} ")
    return ShotTraining(ratio, candidates)
