"""The cell-feature options of ``features.*`` as rows of the real-data bench, scored for the
label-free rule of `bench/selection_rule.py`.

Every option reads the same LoRA-SAM cell crops (cut once, :func:`dorl.features.crops.cell_crops`)
and is standardised per domain before the classifiers, like the "LoRA-SAM domain-std" row.
:func:`shifted_source_scores` gives each option and adaptation its rows: the in-domain macro-F1
on the source (5-fold) and the macro-F1 of the same folds' models on their held-out source cells
as each simulated lab of `bench/simulated_labs.py` images them (each lab standardised,
stain-normalised and AdaBN-recalibrated as its own domain; each is the unlabelled target of
every adaptation). Only source labels are used.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold
from stain_normalisation import normalise_crops
from view_invariance import ViewInvariantProjection, two_views

from dorl.classify.adaptation import SelfTraining, TargetAdapter
from dorl.classify.registry import build_classifier
from dorl.domain_scaler import DomainStandardScaler
from dorl.features.encode import FeatureSettings, build_encoder, domain_sample, encode_crops
from dorl.features.resolution import coarsest_side, resample_through
from simulated_labs import (
    HELD_OUT_COLUMNS,
    LOW_RES_LAB,
    SIMULATED_LABS,
    HeldOutLab,
    shifted_crops,
)

logger = logging.getLogger("bench_realdata")

L0, SAM = "efficientnet_lite0", "litemedsam"


@dataclass(frozen=True)
class Option:
    """One row of the bench: the ``features.*`` settings it stands for, or a stain normalisation
    that left the library (``bench/stain_normalisation.py``)."""

    encoders: tuple[str, ...]
    #: none, reinhard, macenko or grey (:func:`stain_normalisation.normalise_crops`).
    stain: str
    adabn: bool
    #: ``features.tta``: dihedral views averaged per cell.
    tta: int = 1
    #: Project out the axes two random views of a cell differ along (ViewInvariantProjection).
    view_invariance: bool = False
    #: ``features.resolution`` (:mod:`dorl.features.resolution`): "native" or "coarsest".
    resolution: str = "native"


#: The "cheaper" order for ties is this order. The options of EfficientNet-Lite1/2 and of the
#: last stages' pooled outputs (multi-level) left with their code (docs/removed.md).
OPTIONS = {
    "L0 cell": Option((L0,), "none", False),
    "L0 cell AdaBN": Option((L0,), "none", True),
    "L0 cell Reinhard": Option((L0,), "reinhard", False),
    "L0 cell Reinhard AdaBN": Option((L0,), "reinhard", True),
    "L0 cell Macenko AdaBN": Option((L0,), "macenko", True),
    "L0 cell grey AdaBN": Option((L0,), "grey", True),
    "L0 cell AdaBN view-invariant": Option((L0,), "none", True, view_invariance=True),
    "L0 cell AdaBN TTA4": Option((L0,), "none", True, tta=4),
    "L0 cell AdaBN TTA4 view-invariant": Option((L0,), "none", True, tta=4,
                                                view_invariance=True),
    "L0 cell AdaBN TTA8": Option((L0,), "none", True, tta=8),
    "L0 cell AdaBN TTA4 coarsest resolution": Option((L0,), "none", True, tta=4,
                                                     resolution="coarsest"),
    "SAM cell Reinhard AdaBN": Option((SAM,), "reinhard", True),
    "L0 + SAM cell Reinhard AdaBN": Option((L0, SAM), "reinhard", True),
}
#: The random changes of the two views (those of ``cae.view_augment``), the cells per domain
#: they are drawn for and the share of their difference variance that is projected out; fixed
#: before any view-invariant option was measured.
VIEW_AUGMENT = dict(hue=0.08, saturation=0.25, brightness=0.15, blur_prob=0.3, scale=(0.8, 1.25),
                    flip=True)
VIEW_CELLS_PER_DOMAIN = 250
VIEW_VARIANCE = 0.5
def at_resolution(crops: np.ndarray, sides: np.ndarray, domains: np.ndarray,
                  resolution: str) -> np.ndarray:
    """``crops`` as ``features.resolution`` = ``resolution`` gives them: unchanged for
    "native"; for "coarsest", every crop whose native side exceeds the coarsest domain's median
    side resampled through that side."""
    if resolution == "native":
        return crops
    side = coarsest_side(sides, domains)
    return resample_through(crops, np.where(sides > side, side, crops.shape[1]))


def encode_normalised(normalised: np.ndarray, domains: np.ndarray, settings: FeatureSettings
                      ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Every configured encoder's features of colour-normalised crops (n, s, s, 3) uint8, and
    the seconds each took."""
    features, timings = {}, {}
    for name in settings.encoders:
        t0 = time.perf_counter()
        model = build_encoder(name, settings.sam_image_size)
        features[name] = encode_crops(model.to(settings.device), settings.crop_size, normalised,
                                      domains, settings.adabn_cells if settings.adabn else 0,
                                      settings.batch_size, settings.bf16, settings.tta)
        timings[name] = time.perf_counter() - t0
        logger.info("%s features of %d cells (AdaBN %s, %d views): %.1f s, %.1f img/s",
                    name, len(normalised), settings.adabn, settings.tta,
                    timings[name], len(normalised) / timings[name])
    return features, timings


def crop_set(tag: str, option: Option) -> str:
    """The cache tag of the crops ``tag`` as ``option`` reads them: options at another
    resolution read other crops."""
    return tag if option.resolution == "native" else f"{tag} {option.resolution}"


def _normalised(crops: np.ndarray, masks: np.ndarray, domains: np.ndarray, stain: str,
                base: FeatureSettings, seed: int, cache: dict, key) -> tuple[np.ndarray, float]:
    """``crops`` stain-normalised (cached under ``key``) and the seconds it took."""
    if key not in cache:
        t0 = time.perf_counter()
        normalised = normalise_crops(crops, masks, domains, stain, [], seed)[0]
        cache[key] = (normalised, time.perf_counter() - t0)
    return cache[key]


def _encoded(normalised: np.ndarray, domains: np.ndarray, option: Option, base: FeatureSettings,
             cache: dict, key) -> tuple[np.ndarray, float]:
    """Every encoder of ``option`` on ``normalised`` crops side by side (each cached under
    ``key`` + the encoder's settings) and the seconds they took."""
    parts, seconds = [], 0.0
    for encoder in option.encoders:
        part = (*key, encoder, option.adabn, option.tta)
        if part not in cache:
            settings = replace(base, encoders=(encoder,), adabn=option.adabn, tta=option.tta)
            features, timings = encode_normalised(normalised, domains, settings)
            cache[part] = (features[encoder], timings[encoder])
        parts.append(cache[part][0])
        seconds += cache[part][1]
    return np.concatenate(parts, axis=1), seconds


def option_features(name: str, crops: np.ndarray, masks: np.ndarray, domains: np.ndarray,
                    base: FeatureSettings, seed: int, cache: dict, tag: str = "cells"
                    ) -> tuple[np.ndarray, float]:
    """Features (n, d) of one option, standardised per domain, and the seconds of its stain
    normalisation, encoders and view-invariant projection.

    ``cache`` holds each stain normalisation and each encoder's result, keyed by ``tag`` (which
    crop set this is) and the set's size, so options share their normalised crops and a
    concatenation reuses its parts.
    """
    option = OPTIONS[name]
    n = len(crops)
    normalised, seconds = _normalised(crops, masks, domains, option.stain, base, seed, cache,
                                      ("stain", tag, option.stain, n))
    X, encode_s = _encoded(normalised, domains, option, base, cache, (tag, option.stain, n))
    scaler = DomainStandardScaler().fit(X, domains=domains)
    Z = scaler.transform(X, domains=domains)
    seconds += encode_s
    if option.view_invariance:
        t0 = time.perf_counter()
        rows = domain_sample(domains, VIEW_CELLS_PER_DOMAIN)
        diffs = []
        for v, view in enumerate(two_views(crops[rows], masks[rows], VIEW_AUGMENT, seed)):
            view_norm = normalise_crops(view, masks[rows], domains[rows], option.stain, [],
                                        seed)[0]
            V = _encoded(view_norm, domains[rows], option, base, {}, ("view", v))[0]
            diffs.append(scaler.transform(V, domains=domains[rows]))
        projection = ViewInvariantProjection(variance=VIEW_VARIANCE).fit(diffs[0] - diffs[1])
        Z = projection.transform(Z)
        seconds += time.perf_counter() - t0
        logger.info("%s: %d view-difference axes removed (%.2f of their variance) from %d-d",
                    name, len(projection.components_),
                    projection.explained_variance_ratio_.sum(), Z.shape[1])
    return Z.astype(np.float32), seconds


def _macro_f1(labels: np.ndarray, predicted: np.ndarray) -> float:
    return float(f1_score(labels, predicted.astype(str), average="macro"))


def shifted_source_scores(name: str, src_crops: np.ndarray, src_masks: np.ndarray,
                          src_sides: np.ndarray, labels: np.ndarray, base: FeatureSettings,
                          classifiers: list[str], seed: int, cache: dict,
                          adaptations: tuple[str, ...] = ("none",),
                          schedule: SelfTraining = SelfTraining(),
                          held_out: dict[str, HeldOutLab] | None = None,
                          params: dict[str, dict] | None = None) -> pd.DataFrame:
    """In-domain and shifted-source macro-F1 of every classifier and adaptation on one option's
    source cells.

    The source and its simulated labs are encoded as separate domains (each standardised, stain-
    normalised and AdaBN-recalibrated on its own). ``src_sides`` are the source crops' native
    sides (for the low-resolution lab and ``features.resolution``); an option at the "coarsest"
    resolution sees every domain at the low-resolution lab's. Each fold's model is trained on
    the original source cells of the other folds and scored on the held-out cells, original and
    shifted; each simulated lab's held-out cells are the unlabelled target of every adaptation
    in ``adaptations``. ``held_out`` adds :func:`held_out_labs`, other source cells in a blood
    smear's class mix, whose cells are all the target of every fold's model. The
    in-domain score is the same for every adaptation (they change targets only). ``params``
    overrides the classifiers' parameters (``classify.params``).
    """
    params = params or {}
    option = OPTIONS[name]
    labs = shifted_crops(src_crops, src_masks, src_sides)
    held_out = held_out or {}
    for lab, cells in held_out.items():
        labs[lab] = (cells.crops, cells.masks, cells.sides)
    crops = np.concatenate([src_crops] + [c for c, _, _ in labs.values()])
    masks = np.concatenate([src_masks] + [m for _, m, _ in labs.values()])
    sides = np.concatenate([src_sides] + [s for _, _, s in labs.values()])
    sizes = [len(src_crops)] + [len(c) for c, _, _ in labs.values()]
    domains = np.repeat(np.array(["source", *labs]), sizes)
    crops = at_resolution(crops, sides, domains, option.resolution)
    X, _ = option_features(name, crops, masks, domains, base, seed, cache,
                           crop_set("selection", option))
    n = len(src_crops)
    lab_X = {lab: X[domains == lab] for lab in labs}
    splits = list(StratifiedKFold(n_splits=5, shuffle=True, random_state=seed).split(X[:n],
                                                                                       labels))
    models, in_domain_f1 = {}, {}
    for clf in classifiers:
        models[clf] = [build_classifier(clf, seed, params.get(clf)).fit(
            X[:n][train], labels[train]) for train, _ in splits]
        in_domain = np.empty(n, dtype=object)
        for model, (_, test) in zip(models[clf], splits):
            in_domain[test] = model.predict(X[:n][test])
        in_domain_f1[clf] = _macro_f1(labels, in_domain)
    # Both rules read only the classifier best in-domain, so only it is adapted.
    best = max(classifiers, key=in_domain_f1.get)
    out = []
    for clf in classifiers:
        for a in adaptations if clf == best else ("none",):
            folds = {lab: np.empty(n, dtype=object) for lab in labs if lab not in held_out}
            whole = {lab: [] for lab in held_out}  # macro-F1 under each fold's model
            for model, (train, test) in zip(models[clf], splits):
                adapter = TargetAdapter(a, build_classifier(clf, seed, params.get(clf)), model,
                                        X[:n][train], labels[train], schedule)
                for lab in labs:
                    target = lab_X[lab] if lab in held_out else lab_X[lab][test]
                    predicted = adapter.model_for(target).predict(target)
                    if lab in held_out:
                        whole[lab].append(_macro_f1(held_out[lab].labels, predicted))
                    else:
                        folds[lab][test] = predicted
            lab_f1 = {lab: _macro_f1(labels, p) for lab, p in folds.items()}
            lab_f1.update({lab: float(np.mean(f1)) for lab, f1 in whole.items()})
            out.append({"option": name, "classifier": clf, "seed": seed, "adaptation": a,
                        "in_domain_f1": in_domain_f1[clf],
                        "shifted_f1": float(np.mean(list(lab_f1.values()))),
                        # Runs C-H's score, over the labs before the low-resolution one.
                        "shifted_f1_colour_blur_zoom": float(np.mean(
                            [lab_f1[lab] for lab in SIMULATED_LABS])),
                        "low_res_f1": lab_f1[LOW_RES_LAB],
                        **{column: lab_f1.get(lab, float("nan"))
                           for lab, column in HELD_OUT_COLUMNS.items()}})
    return pd.DataFrame(out)


def encoder_features(name: str, n: int, cache: dict) -> dict[str, np.ndarray]:
    """The raw (not standardised) features of each encoder of option ``name`` over the ``n``
    cells :func:`option_features` encoded, from its cache."""
    o = OPTIONS[name]
    return {e: cache[(crop_set("cells", o), o.stain, n, e, o.adabn, o.tta)][0]
            for e in o.encoders}


