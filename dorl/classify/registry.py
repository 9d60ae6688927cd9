"""The classifier registry: names in ``classify.classifiers`` -> configured scikit-learn estimators.

Built-in models follow the DoRL / BC-SAM notebooks' classifiers where that is fast enough on a
CPU, with these deliberate changes:

* every model that supports it weighs classes by inverse frequency (``class_weight="balanced"``;
  XGBoost through sample weights), because white-cell classes are very imbalanced;
* the linear SVM is ``LinearSVC`` (same model family as ``SVC(kernel="linear")``, much faster);
* the random forest has 100 trees (the papers: 200) and the boosted trees use 63-64 histogram
  bins (LightGBM also 15 leaves): within noise of the larger settings, several times faster;
* models that need it see standardised features (a ``StandardScaler`` in a ``Pipeline``, fitted on
  the training cells only); tree ensembles see raw features;
* every model runs single-threaded: the evaluation parallelises over fits instead.

``classify.params`` overrides a built-in model's parameters, e.g. ``{rf: {n_estimators: 300}}``;
``classify.custom`` adds any scikit-learn-compatible classifier by import path.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from lightgbm import LGBMClassifier
from sklearn.base import clone, is_classifier
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from xgboost import XGBClassifier

from dorl.classify.estimators import EncodedLabelClassifier
from dorl.errors import InputError


class ClassifierError(InputError, ValueError):
    """A classifier name, import path or parameter in the config is invalid."""


@dataclass(frozen=True)
class Builtin:
    """A built-in model: how to construct it and whether it needs standardised features."""

    label: str
    make: Callable[..., Any]
    defaults: Mapping[str, Any]
    scale: bool
    #: Wrap in EncodedLabelClassifier; its ``class_weight`` parameter goes to the wrapper.
    encode_labels: bool = False
    #: A kernel SVM: its training set is capped at ``classify.kernel_svm_max_train``.
    kernel: bool = False


BUILTINS: Mapping[str, Builtin] = {
    "rf": Builtin("Random forest", RandomForestClassifier,
                  {"n_estimators": 100, "max_depth": 16, "class_weight": "balanced",
                   "n_jobs": 1}, scale=False),
    "svm_linear": Builtin("SVM (linear)", LinearSVC,
                          {"C": 1.0, "class_weight": "balanced", "max_iter": 5000}, scale=True),
    "svm_poly": Builtin("SVM (poly)", SVC,
                        {"kernel": "poly", "degree": 3, "C": 1.0, "gamma": "scale",
                         "class_weight": "balanced", "cache_size": 1000}, scale=True,
                        kernel=True),
    "svm_rbf": Builtin("SVM (RBF)", SVC,
                       {"kernel": "rbf", "C": 1.0, "gamma": "scale", "class_weight": "balanced",
                        "cache_size": 1000}, scale=True, kernel=True),
    "logreg": Builtin("Logistic regression", LogisticRegression,
                      {"C": 1.0, "max_iter": 500, "class_weight": "balanced"}, scale=True),
    "mlp": Builtin("MLP", MLPClassifier,
                   {"hidden_layer_sizes": (100,), "max_iter": 1000, "early_stopping": True,
                    "n_iter_no_change": 10}, scale=True),
    "knn": Builtin("KNN", KNeighborsClassifier, {"n_neighbors": 5, "n_jobs": 1}, scale=True),
    # The boosted trees sample 30% of the features for each tree: on 1,280-d cell features it
    # scored higher by the source-only rule and fits 1.6-2.6x faster (docs/history/runs-a-to-m.md, Run M).
    "xgboost": Builtin("XGBoost", XGBClassifier,
                       {"tree_method": "hist", "max_bin": 64, "n_estimators": 100, "max_depth": 6,
                        "colsample_bytree": 0.3, "n_jobs": 1, "verbosity": 0,
                        "class_weight": "balanced"}, scale=False, encode_labels=True),
    "lightgbm": Builtin("LightGBM", LGBMClassifier,
                        {"n_estimators": 100, "num_leaves": 15, "max_bin": 63,
                         "colsample_bytree": 0.3, "class_weight": "balanced", "n_jobs": 1,
                         "verbose": -1}, scale=False),
}


def _import_class(path: str):
    module_name, _, attr = str(path).rpartition(".")
    if not module_name:
        raise ClassifierError(f"custom classifier class {path!r} is not a dotted import path "
                              f"(e.g. sklearn.ensemble.ExtraTreesClassifier)")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ClassifierError(f"cannot import custom classifier {path!r}: {exc}") from exc


def _takes_random_state(cls) -> bool:
    """Whether ``cls`` has a ``random_state`` parameter (XGBoost hides it behind ``**kwargs``)."""
    if "random_state" in inspect.signature(cls).parameters:
        return True
    try:
        return "random_state" in cls().get_params()
    except TypeError:  # required constructor arguments: rely on the signature alone
        return False


def _seeded(cls, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """Add ``random_state=seed`` when ``cls`` takes one and it is not set."""
    if "random_state" not in params and _takes_random_state(cls):
        return {**params, "random_state": seed}
    return params


def _construct(name: str, cls, params: dict[str, Any]):
    try:
        return cls(**params)
    except TypeError as exc:
        raise ClassifierError(f"classifier {name!r}: bad parameters for {cls.__name__}: {exc}") \
            from exc


def build_classifier(name: str, seed: int, params: Mapping[str, Any] | None = None,
                     custom: Mapping[str, Mapping[str, Any]] | None = None):
    """Return an unfitted classifier for registry name ``name``.

    Parameters
    ----------
    name : str
        A key of ``BUILTINS`` or of ``custom``.
    seed : int
        Given as ``random_state`` to every model that takes one.
    params : mapping, optional
        Overrides of a built-in model's parameters (``classify.params[name]``).
    custom : mapping, optional
        ``classify.custom``: ``{name: {class: "module.Class", params: {...}, scale: bool,
        encode_labels: bool}}``.

    Returns
    -------
    estimator
        A classifier, a ``Pipeline(StandardScaler, model)`` when the model needs scaling, and
        wrapped in :class:`~dorl.classify.estimators.EncodedLabelClassifier` when it needs labels
        0..K-1.
    """
    custom = custom or {}
    if name in custom:
        spec = dict(custom[name])
        unknown = sorted(set(spec) - {"class", "params", "scale", "encode_labels"})
        if unknown or "class" not in spec:
            raise ClassifierError(f"classify.custom.{name} needs `class` and may have `params`, "
                                  f"`scale`, `encode_labels`; got keys {sorted(spec)}")
        cls = _import_class(spec["class"])
        model = _construct(name, cls, _seeded(cls, dict(spec.get("params") or {}), seed))
        if not is_classifier(model):
            raise ClassifierError(f"classify.custom.{name}: {spec['class']} is not a "
                                  f"scikit-learn classifier")
        if spec.get("encode_labels", False):
            model = EncodedLabelClassifier(model)
        scale = bool(spec.get("scale", False))
    elif name in BUILTINS:
        builtin = BUILTINS[name]
        merged = {**builtin.defaults, **dict(params or {})}
        if builtin.encode_labels:
            class_weight = merged.pop("class_weight", None)
            model = _construct(name, builtin.make, _seeded(builtin.make, merged, seed))
            model = EncodedLabelClassifier(model, class_weight=class_weight)
        else:
            model = _construct(name, builtin.make, _seeded(builtin.make, merged, seed))
        scale = builtin.scale
    else:
        raise ClassifierError(f"unknown classifier {name!r}; built-in: {sorted(BUILTINS)}, "
                              f"custom: {sorted(custom)}")
    if scale:
        model = Pipeline([("scale", StandardScaler()), ("model", model)])
    return clone(model)


def is_kernel_svm(name: str) -> bool:
    """Whether registry entry ``name`` is a built-in kernel SVM (quadratic in its training set)."""
    return name in BUILTINS and BUILTINS[name].kernel


def display_name(name: str) -> str:
    """Return the table name of a registry entry (the key itself for custom models)."""
    return BUILTINS[name].label if name in BUILTINS else name
