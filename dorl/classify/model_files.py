"""Saved classifier bundles that load without running code.

A model is saved with ``skops.io``: its file holds a schema of plain values and arrays, and
loading rebuilds only the object types on :data:`TRUSTED_TYPES`. A file that names any other
type is refused before anything in it is built, so a model received from another lab cannot run
code when ``dorl classify predict`` opens it (a pickle or joblib file can). XGBoost and LightGBM
models keep their own model buffers inside the bundle, which their boosters parse as data.
"""

from __future__ import annotations

from pathlib import Path

from dorl.atomic import atomic_path
from dorl.errors import InputError

#: The suffix of a saved model.
MODEL_SUFFIX = ".skops"
#: The types beyond skops' built-in safe ones that a dorl model file may hold: those of the
#: built-in classifiers (dorl/classify/registry.py) and of the adapted models.
TRUSTED_TYPES = (
    "collections.OrderedDict",
    "dorl.classify.adaptation.ClassBalancedModel",
    "dorl.classify.estimators.EncodedLabelClassifier",
    "lightgbm.basic.Booster",
    "lightgbm.sklearn.LGBMClassifier",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    "sklearn.tree._tree.Tree",
    "xgboost.core.Booster",
    "xgboost.sklearn.XGBClassifier",
)


#: Bounds on a model archive, checked from its zip directory before anything is extracted.
#: Twice a KNN model over 100,000 cells of 1,280 float64 features (it keeps its training cells:
#: 1.02 GB by arithmetic), the largest a built-in classifier makes.
MAX_UNCOMPRESSED = 2 * 1024 ** 3
#: A random forest of 1,000 trees stores about 5,000 members (100 trees: 503).
MAX_MEMBERS = 100_000
#: Model arrays hardly compress (the saved models: 1.00-1.02 times); past this size an archive
#: that expands by more than :data:`MAX_RATIO` is a decompression bomb.
RATIO_CHECKED_FROM, MAX_RATIO = 64 * 1024 ** 2, 50


class ModelFileError(InputError, ValueError):
    """A model file is unreadable, or holds a type dorl does not trust."""


def check_archive(path: Path) -> None:
    """Refuse a model archive whose zip directory declares more than the bounds above, before
    anything in it is read (a small file may expand to gigabytes).

    Raises
    ------
    ModelFileError
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(f"{path}: not a dorl classify model ({exc})") from exc
    expanded = sum(m.file_size for m in members)
    packed = max(1, path.stat().st_size)
    if len(members) > MAX_MEMBERS or expanded > MAX_UNCOMPRESSED or (
            expanded > RATIO_CHECKED_FROM and expanded / packed > MAX_RATIO):
        raise ModelFileError(
            f"{path}: refused, it would expand to {expanded:,} bytes in {len(members):,} members "
            f"from {packed:,} (bounds: {MAX_UNCOMPRESSED:,} bytes, {MAX_MEMBERS:,} members, "
            f"{MAX_RATIO}x past {RATIO_CHECKED_FROM:,} bytes)")


def save_model_bundle(path: str | Path, bundle: dict) -> Path:
    """Write ``bundle`` (the model and its metadata) to ``path`` atomically."""
    import skops.io as sio

    with atomic_path(path) as tmp:
        sio.dump(bundle, tmp)
    return Path(path)


def load_model_bundle(path: str | Path) -> dict:
    """The bundle at ``path``, rebuilt only from trusted types.

    Raises
    ------
    ModelFileError
        When the file is missing, is not a skops file, would expand beyond the bounds of
        :func:`check_archive`, or names a type outside :data:`TRUSTED_TYPES` (checked before
        any object is built).
    """
    import skops.io as sio

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    check_archive(path)
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:  # not a zip, no schema, a bad schema: many kinds
        raise ModelFileError(f"{path}: not a dorl classify model ({type(exc).__name__}: "
                             f"{exc})") from exc
    refused = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if refused:
        raise ModelFileError(f"{path}: refused, it holds types dorl does not trust: {refused}")
    try:
        bundle = sio.load(path, trusted=list(untrusted))
    except Exception as exc:
        raise ModelFileError(f"{path}: not a dorl classify model ({exc})") from exc
    if not isinstance(bundle, dict) or "model" not in bundle:
        raise ModelFileError(f"{path}: not a dorl classify model (no model bundle)")
    return bundle
