"""Run the classify stage: fit every classifier on every protocol split and adaptation, score and
save (:mod:`dorl.classify.predict` applies a saved model).

Scoring policy (stated in every report; the scores are :mod:`dorl.classify.scoring`'s):

* cells labelled ``unknown`` (or unlabelled) are never trained or scored on; they are counted;
* label-free adaptations (:mod:`dorl.classify.adaptation`) are separate rows, and the scores that
  choose a classifier without target labels (``snd``, ``agreement``) never read a target label.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from omegaconf import OmegaConf
from sklearn.base import clone
from sklearn.metrics import confusion_matrix
from tqdm import tqdm

from dorl import __version__
from dorl.classify.adaptation import (
    BALANCED,
    STANDARDISED,
    TARGET_SIDE,
    SelfTraining,
    TargetAdapter,
    coral_align,
    fit_class_balanced,
)
from dorl.classify.inputs import FeatureInput, load_input, read_target_labels
from dorl.classify.label_free_scores import model_density, vote_agreement
from dorl.classify.model_files import MODEL_SUFFIX, save_model_bundle
from dorl.classify.protocols import TARGET_LABELS, Split, cap_train, make_splits
from dorl.classify.registry import build_classifier, is_kernel_svm
from dorl.classify.scoring import kept_classes, score
from dorl.classify.reports import write_reports
from dorl.classify.settings import ClassifySettings
from dorl.classify.shots import ShotTraining, choose_ratio, training_rows
from dorl.data.taxonomy import label_space
from dorl.featstore import FeatureFileError

logger = logging.getLogger(__name__)


def _training_rows(model, X: np.ndarray, y: np.ndarray, split: Split,
                   shot_training: ShotTraining, seed: int) -> np.ndarray:
    """``split.train``, its labelled target cells beside the source's as ``shot_training``
    routes them (:mod:`dorl.classify.shots`)."""
    shots = split.labelled_target[np.isin(split.labelled_target, split.train)]
    if not len(shots):
        return split.train
    source = np.setdiff1d(split.train, shots)
    ratio = choose_ratio(model, X, y, source, shots, shot_training, seed)
    return training_rows(source, shots, y, ratio, np.random.default_rng([seed, split.fold]))


def _fit_predict(model, X: np.ndarray, y: np.ndarray, split: Split, keep_model: bool,
                 adaptation: str, adapted: tuple[bool, ...], aligned: tuple, schedule: SelfTraining,
                 seed: int, max_cells: int | None = None,
                 shot_training: ShotTraining = ShotTraining()):
    """Fit a clone of ``model`` on ``split.train`` (its labelled target cells routed by
    ``shot_training``); predict each evaluation's test cells.

    ``adapted[i]`` says whether evaluation ``i`` is a target the adaptation changes (its domain
    is not a training domain); ``aligned[i]`` holds its CORAL-aligned test features (or None).
    Self-training keeps training plus pseudo-labelled cells within ``max_cells``.
    Returns the fitted model (only when ``keep_model``: it can be large to send back), the
    predictions and the soft-neighbourhood density of each evaluation, the fit and predict
    seconds and the warnings raised.
    """
    start = time.perf_counter()
    train = _training_rows(model, X, y, split, shot_training, seed)
    X_train, y_train = X[train], y[train]
    preds, densities = [], []
    adapter = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if adaptation in SAVED_ADAPTATIONS and not split.evaluations:
            # The saved model of an adaptation that predicts new labs without refitting.
            fitted = SAVED_ADAPTATIONS[adaptation](model, X_train, y_train)
        else:
            fitted = clone(model).fit(X_train, y_train)
            adapter = TargetAdapter(adaptation, model, fitted, X_train, y_train, schedule,
                                    max_cells)
        fit_s = time.perf_counter() - start
        for ev, is_adapted, X_aligned in zip(split.evaluations, adapted, aligned):
            X_test = X[ev.test] if X_aligned is None else X_aligned
            final = fitted
            if is_adapted:
                t0 = time.perf_counter()
                final = adapter.model_for(X_test)
                fit_s += time.perf_counter() - t0
            preds.append(np.asarray(final.predict(X_test)).astype(str) if len(ev.test)
                         else np.empty(0, dtype=str))
            scoreable = len(ev.test) > 1 and (hasattr(final, "predict_proba")
                                              or hasattr(final, "decision_function"))
            densities.append(model_density(final, X_test, seed) if scoreable else float("nan"))
    messages = sorted({f"{w.category.__name__}: {str(w.message)[:160]}" for w in caught})
    return (fitted if keep_model else None), preds, densities, fit_s, \
        time.perf_counter() - start - fit_s, messages


@dataclass
class _Task:
    input: FeatureInput
    adaptation: str
    classifier: str
    seed: int
    split: Split


def _tasks(inputs: list[FeatureInput], c: ClassifySettings) -> list[_Task]:
    """Every fit: feature set x seed x split x adaptation x classifier. Adapted rows run the
    ``adaptation_classifiers`` among the classifiers; few-shot splits run the
    ``few_shot.classifiers`` without the target-side adaptations (coral and self-training),
    whose target then holds labelled training cells."""
    tasks = []
    for inp in inputs:
        for seed in c.seeds:
            max_train = c.max_train_cells
            splits = list(make_splits(inp.labels, inp.domains, list(c.protocols), c.n_folds,
                                      seed, inp.groups, max_train, c.sources, c.shots, c.draws,
                                      inp.user_labelled))
            if c.save_models and seed == c.seeds[0] and set(c.adaptations) & set(
                    SAVED_ADAPTATIONS):
                every = cap_train(np.arange(len(inp.labels)), inp.labels, max_train,
                                  np.random.default_rng(seed))
                splits.append(Split("all", 0, every, ()))
            for s in splits:
                # The user's labelled target cells train like few-shot cells.
                few_shot = any(e.protocol in ("few_shot", TARGET_LABELS) for e in s.evaluations)
                kernel_split = _kernel_split(s, inp.labels, c.kernel_svm_max_train, seed)
                for adaptation in c.adaptations:
                    if not s.evaluations and adaptation not in SAVED_ADAPTATIONS:
                        continue  # the others refit on each target's cells: nothing to save
                    if few_shot and adaptation in TARGET_SIDE:
                        continue
                    names = c.few_shot_classifiers if few_shot else c.classifiers
                    if not few_shot and adaptation != "none" \
                            and c.adaptation_classifiers is not None:
                        names = [n for n in names if n in c.adaptation_classifiers]
                    tasks += [_Task(inp, adaptation, name, seed,
                                    kernel_split if is_kernel_svm(name) else s) for name in names]
    return tasks


def _kernel_split(split: Split, labels: np.ndarray, cap: int | None, seed: int) -> Split:
    """``split`` with its training cells cut to ``cap`` for the kernel SVMs (class-stratified,
    seeded); the split itself when it is small enough."""
    if cap is None or len(split.train) <= cap:
        return split
    return replace(split, train=cap_train(split.train, labels, cap,
                                          np.random.default_rng([seed, len(split.train)])))


def _max_cells(classifier: str, c: ClassifySettings) -> int | None:
    """The training-set cap of ``classifier``: the kernel SVMs' own, else the run's."""
    caps = [c.max_train_cells] + ([c.kernel_svm_max_train] if is_kernel_svm(classifier) else [])
    caps = [cap for cap in caps if cap is not None]
    return min(caps) if caps else None


#: Adaptations whose model is saved (``classify.save_models``), with how it is fitted on all
#: labelled cells: the balanced adaptations predict a new lab domain by domain without refitting.
SAVED_ADAPTATIONS = {
    "none": lambda model, X, y: clone(model).fit(X, y),
    **{name: partial(fit_class_balanced, weights=weights) for name, weights in BALANCED.items()}}


def model_file_name(feature_set: str, classifier: str, adaptation: str) -> str:
    """``<feature_set>__<classifier>.skops``, with ``__<adaptation>`` before the suffix for an
    adapted model."""
    suffix = "" if adaptation == "none" else f"__{adaptation}"
    return f"{feature_set}__{classifier}{suffix}{MODEL_SUFFIX}"


def _save_model(path: Path, fitted, task: _Task) -> None:
    inp = task.input
    bundle = {
        "model": fitted, "classifier": task.classifier, "classes": list(map(str, fitted.classes_)),
        "feature_dim": int(inp.X.shape[1]), "feature_key": inp.key, "feature_set": inp.name,
        "feature_file": str(inp.path), "embedding_sha256": inp.embedding_sha256,
        "feature_signature": inp.signature, "encoder_sha256": inp.encoder_sha256,
        "domains": sorted(set(inp.domains)),
        "n_train": int(len(task.split.train)), "seed": task.seed, "dorl_version": __version__,
        "adaptation": task.adaptation,
    }
    save_model_bundle(path, bundle)


class _AdaptedInputs:
    """The features and per-evaluation inputs each adaptation needs, computed once per feature
    set and split in the parent process (CORAL's eigen-decompositions would otherwise be
    repeated for every classifier)."""

    def __init__(self):
        self._standardised: dict[str, np.ndarray] = {}
        self._aligned: dict[tuple, tuple] = {}

    def features(self, task: _Task) -> np.ndarray:
        if task.adaptation not in STANDARDISED:
            return task.input.X
        name = task.input.name
        if name not in self._standardised:
            self._standardised[name] = task.input.standardised()
        return self._standardised[name]

    @staticmethod
    def adapted(task: _Task) -> tuple[bool, ...]:
        train_domains = set(task.input.domains[task.split.train])
        return tuple(task.adaptation in TARGET_SIDE and ev.target not in train_domains
                     for ev in task.split.evaluations)

    def aligned(self, task: _Task) -> tuple:
        if task.adaptation != "coral":
            return (None,) * len(task.split.evaluations)
        key = (task.input.name, task.seed, id(task.split))
        if key not in self._aligned:
            X = self.features(task)
            self._aligned[key] = tuple(
                coral_align(X[ev.test], X[task.split.train]) if is_adapted and len(ev.test) > 1
                else None for ev, is_adapted in zip(task.split.evaluations, self.adapted(task)))
        return self._aligned[key]


def _agreement_rows(votes: dict) -> list[dict[str, Any]]:
    """The ``label_free / agreement`` rows: each classifier's agreement with the other
    classifiers' majority vote on the same evaluation (:func:`vote_agreement`); none where a
    single classifier ran."""
    rows = []
    for (base, n_test), by_classifier in votes.items():
        if len(by_classifier) < 2:
            continue
        for clf, value in vote_agreement(by_classifier).items():
            rows.append({**dict(base), "classifier": clf, "scope": "label_free",
                         "metric": "agreement", "label": "", "value": value, "n_test": n_test})
    return rows


def run_classification(inputs: list[FeatureInput], settings: ClassifySettings, out_dir: Path):
    """Fit and score every (feature set, adaptation, classifier, seed, split); save the final
    models.

    Returns
    -------
    results : DataFrame
        One row per feature set x adaptation x classifier x protocol x source x target x shots x
        fold x seed x scope x metric (x label for per-class metrics). Scope ``label_free`` holds
        the scores that use no target label: ``snd`` (soft neighbourhood density) and
        ``agreement`` (with the other classifiers' vote).
    confusions : dict
        ``(feature_set, adaptation, classifier, protocol, source, target) -> (labels, counts)``,
        counts of shape (n_labels, n_labels) summed over folds and seeds (rows true, columns
        predicted); few-shot fits are left out.
    timings : DataFrame
        Fit and predict seconds per task.
    """
    c = settings
    tasks = _tasks(inputs, c)
    adapted = _AdaptedInputs()
    models = {(t.input.name, t.classifier, t.seed): build_classifier(
        t.classifier, t.seed, c.params.get(t.classifier), c.custom) for t in tasks}
    logger.info("classify: %d fits (%d feature sets, %d classifiers, adaptations %s, seeds %s, "
                "protocols %s) on %d worker(s)", len(tasks), len(inputs), len(c.classifiers),
                list(c.adaptations), list(c.seeds), list(c.protocols), c.n_jobs)
    jobs = (delayed(_fit_predict)(models[(t.input.name, t.classifier, t.seed)],
                                  adapted.features(t), t.input.labels, t.split,
                                  not t.split.evaluations, t.adaptation, adapted.adapted(t),
                                  adapted.aligned(t), c.self_training, t.seed,
                                  _max_cells(t.classifier, c), c.shot_training)
            for t in tasks)
    outputs = Parallel(n_jobs=c.n_jobs, return_as="generator")(jobs)
    rows, confusions, timings, warned, votes = [], {}, [], {}, {}
    for task, (fitted, preds, densities, fit_s, pred_s, messages) in tqdm(
            zip(tasks, outputs), total=len(tasks), desc="classify", unit="fit"):
        inp, split = task.input, task.split
        timings.append({"feature_set": inp.name, "adaptation": task.adaptation,
                        "classifier": task.classifier, "source": split.source,
                        "fold": split.fold, "seed": task.seed, "n_train": len(split.train),
                        "fit_s": fit_s, "predict_s": pred_s})
        if messages:
            warned.setdefault((inp.name, task.classifier), set()).update(messages)
        if not split.evaluations:  # the final model on all labelled cells
            _save_model(out_dir / "models" / model_file_name(inp.name, task.classifier,
                                                             task.adaptation), fitted, task)
            continue
        train_classes = set(inp.labels[split.train])
        labels_all = sorted(set(inp.labels))
        # Every fit's target predictions wait for the vote: kept as the smallest integer codes.
        code_type = np.min_scalar_type(len(labels_all))
        for ev, pred, density in zip(split.evaluations, preds, densities):
            truth = inp.labels[ev.test]
            target = kept_classes(inp.labels[inp.domains == ev.target], c.min_class_count)
            base = {"feature_set": inp.name, "adaptation": task.adaptation,
                    "classifier": task.classifier, "protocol": ev.protocol,
                    "source": split.source, "target": ev.target, "shots": ev.shots,
                    "fold": split.fold, "seed": task.seed}
            rows += [{**base, **r} for r in score(truth, pred, train_classes, target)]
            if np.isfinite(density):
                rows.append({**base, "scope": "label_free", "metric": "snd", "label": "",
                             "value": density, "n_test": len(truth)})
            vote_key = tuple((k, v) for k, v in base.items() if k != "classifier")
            votes.setdefault((vote_key, len(truth)), {})[task.classifier] = \
                np.searchsorted(labels_all, pred).astype(code_type)
            if ev.protocol == "few_shot":
                continue
            cm_key = (inp.name, task.adaptation, task.classifier, ev.protocol, split.source,
                      ev.target)
            counts = confusion_matrix(truth, pred, labels=labels_all)
            prev = confusions.get(cm_key, (labels_all, 0))[1]
            confusions[cm_key] = (labels_all, prev + counts)
    rows += _agreement_rows(votes)
    for (name, clf), messages in warned.items():
        logger.warning("%s / %s: warnings during fitting: %s", name, clf, "; ".join(messages))
    return pd.DataFrame(rows), confusions, pd.DataFrame(timings)


def inputs_from_config(cfg) -> list[FeatureInput]:
    """Load every feature set named in ``classify.features`` (with ``classify.obsm`` keys).

    An entry set to null is left out (e.g. ``dorl: null`` drops the default feature file).
    The cells of ``classify.target_labels`` take the user's labels.
    """
    c = cfg.classify
    features = {name: path for name, path in
                OmegaConf.to_container(c.features, resolve=True).items() if path is not None}
    obsm = OmegaConf.to_container(c.obsm, resolve=True) or {}
    if not features:
        raise FeatureFileError("classify.features is empty: name at least one feature file")
    unknown = sorted(set(obsm) - set(features))
    if unknown:
        raise FeatureFileError(f"classify.obsm names {unknown}, which are not in "
                               f"classify.features ({sorted(features)})")
    own = features.get("dorl")
    if own is not None and len(features) > 1 and not Path(own).is_file():
        raise FeatureFileError(
            f"feature file not found: {own}, classify.features' default entry 'dorl' (this "
            f"run's own embeddings, kept beside {sorted(set(features) - {'dorl'})}); run `make "
            f"embed` first, or leave it out with classify.features.dorl=null")
    standardised = any(a in STANDARDISED for a in c.adaptations)
    user_labels = None if c.target_labels is None else read_target_labels(
        c.target_labels, label_space(str(cfg.data.label_space)))
    return [load_input(name, path, obsm.get(name, "X"), standardised, user_labels,
                       bool(c.keep_qc_failed)) for name, path in features.items()]


def classify_from_config(cfg) -> Path:
    """Run the whole classify stage from the config and write ``classify.out_dir``.

    Writes ``results.csv``, ``results.md``, ``summary.json``, confusion-matrix PNGs and (with
    ``classify.save_models``) the models of :data:`SAVED_ADAPTATIONS`,
    ``models/<feature_set>__<classifier>[__<adaptation>].skops``, fitted on all labelled cells
    (up to ``classify.max_train_cells``); logs the results table. Returns the output folder.
    """
    out_dir = Path(cfg.classify.out_dir)
    start = time.perf_counter()
    settings = ClassifySettings.from_config(cfg)
    inputs = inputs_from_config(cfg)
    for inp in inputs:
        logger.info("%s: %s[%s], %d labelled cells x %d features, domains %s, %d unknown and "
                    "%d failing quality control left out%s", inp.name, inp.path, inp.key,
                    *inp.X.shape, sorted(set(inp.domains)), sum(inp.n_unknown.values()),
                    sum(inp.n_qc_failed.values()),
                    ", group-aware splits" if inp.groups is not None else "")
    results, confusions, timings = run_classification(inputs, settings, out_dir)
    table = write_reports(out_dir, results, confusions, timings, inputs, settings,
                          time.perf_counter() - start)
    logger.info("classification results (macro-F1, mean ± std over folds and seeds):\n%s", table)
    return out_dir
