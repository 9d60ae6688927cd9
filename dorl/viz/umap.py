"""UMAP of the embeddings, coloured by domain and by class side by side (PNG, and the offline
HTML explorer of :mod:`dorl.viz.explorer`).

Well-aligned embeddings mix the domains (left panel) while keeping classes apart (right panel).
The map is fitted on all cells, or on the source domains only and then applied to the rest (so
the target domains do not shape it). It is seeded (``random_state`` = the run seed, which makes
UMAP single-threaded and reproducible) and its coordinates go back into the feature file as
``obsm["X_umap"]``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from threadpoolctl import threadpool_limits

from dorl.atomic import atomic_path
from dorl.config import ConfigError
from dorl.featstore import FeatureFileError, add_obsm, cell_paths, read_features
from dorl.figures import pyplot, save_figure
from dorl.viz.explorer import colour_map, write_explorer

logger = logging.getLogger(__name__)

#: ``umap.fit_on``: fit the map on every cell, or on the source domains and place the rest.
FIT_ON = ("all", "source")

#: Below this many cells UMAP searches neighbours exactly (its own threshold); dorl then finds
#: them with scikit-learn, which gives the same exact neighbours without UMAP's numba kernels
#: (a first 72-cell map in a new process: 12.0 s with them, 6.4 s without).
EXACT_NEIGHBOURS_BELOW = 4096


def check_fit_on(fit_on: str) -> None:
    """Raise :class:`ConfigError` (a ``ValueError``) unless ``fit_on`` is one of :data:`FIT_ON`."""
    if fit_on not in FIT_ON:
        raise ConfigError(f"umap.fit_on must be one of {list(FIT_ON)}, got {fit_on!r}")


def fit_umap(X: np.ndarray, domains: np.ndarray, seed: int, n_neighbors: int = 15,
             min_dist: float = 0.1, fit_on: str = "all",
             source_domains: Sequence[str] = ()) -> np.ndarray:
    """Return 2-D UMAP coordinates of shape (n_cells, 2).

    Parameters
    ----------
    X : ndarray of shape (n_cells, n_features)
    domains : ndarray of shape (n_cells,), str
    seed : int
        UMAP ``random_state``.
    n_neighbors, min_dist : UMAP parameters.
    fit_on : {"all", "source"}
        ``source``: fit on the cells of ``source_domains`` only, then transform the rest.
    source_domains : sequence of str
    """
    import umap

    check_fit_on(fit_on)
    fit_mask = np.ones(len(X), dtype=bool)
    if fit_on == "source":
        missing = sorted(set(source_domains) - set(domains))
        if not source_domains or missing:
            raise ValueError(f"umap.fit_on=source needs umap.source_domains from "
                             f"{sorted(set(domains))}; got {list(source_domains)}")
        fit_mask = np.isin(domains, list(source_domains))
    if fit_mask.sum() <= n_neighbors:
        raise ValueError(f"UMAP needs more than n_neighbors={n_neighbors} cells to fit on, "
                         f"got {fit_mask.sum()}")
    # fit_on=source transforms the other cells with UMAP's own search index, which
    # precomputed neighbours do not come with.
    exact = fit_mask.all() and len(X) < EXACT_NEIGHBOURS_BELOW
    knn = _exact_neighbours(X, n_neighbors) if exact else (None, None, None)
    reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed, n_jobs=1,
                        precomputed_knn=knn)
    coords = np.empty((len(X), 2), dtype=np.float32)
    # numba starts its OpenMP pool on the first parallel call of a process and sets the shared
    # libgomp (torch's, when torch is loaded) to every core: torch's threads, when they come
    # from OMP_NUM_THREADS (a job scheduler's, say), would change under a library caller's
    # feet. threadpool_limits puts each OpenMP library's count back when the map is drawn.
    with threadpool_limits(limits=None, user_api="openmp"), warnings.catch_warnings():
        # "knn_search_index is not an NNDescent object": only transform would need it.
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]")
        coords[fit_mask] = reducer.fit_transform(X[fit_mask])
        if not fit_mask.all():
            coords[~fit_mask] = reducer.transform(X[~fit_mask])
    return coords


def _exact_neighbours(X: np.ndarray, n_neighbors: int) -> tuple:
    """UMAP's ``precomputed_knn``: each cell's ``n_neighbors`` nearest cells (itself first),
    shapes (n_cells, n_neighbors), int indices and float32 Euclidean distances."""
    from sklearn.neighbors import NearestNeighbors

    distances, indices = NearestNeighbors(n_neighbors=n_neighbors).fit(X).kneighbors(X)
    return indices, distances.astype(np.float32), None


def plot_png(coords: np.ndarray, domains: np.ndarray, labels: np.ndarray, path: Path,
             title: str) -> Path:
    """Two scatter panels (by domain, by class) of ``coords`` (n_cells, 2), legends outside."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), layout="constrained")
    size = max(1.0, 100 / np.sqrt(len(coords)))
    for ax, values, name in ((axes[0], domains, "domain"), (axes[1], labels, "class")):
        colours = colour_map(values, name)
        order = np.random.default_rng(0).permutation(len(coords))  # no domain drawn on top
        ax.scatter(coords[order, 0], coords[order, 1], s=size, linewidths=0,
                   c=[colours[str(v)] for v in values[order]])
        handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=n)
                   for n, c in colours.items()]
        ax.legend(handles=handles, title=name, loc="upper left", bbox_to_anchor=(1.0, 1.0),
                  frameon=False, fontsize=8)
        ax.set_title(f"by {name}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    return save_figure(fig, path, dpi=120)


def _write_coordinates(path: Path, coords: np.ndarray, obs: pd.DataFrame,
                       predictions: pd.DataFrame | None) -> Path:
    """``umap.csv``: each cell's id, path, domain, label, prediction and 2-D coordinates, for
    tools that read tables (napari, spreadsheets)."""
    ids = obs.index.astype(str)
    table = pd.DataFrame({
        "cell_id": ids,
        "path": cell_paths(obs),
        "domain": obs["domain"].astype(str).to_numpy(),
        "label": obs["label"].astype(str).to_numpy(),
        "predicted": "" if predictions is None
        else predictions["predicted"].reindex(ids).fillna("").to_numpy(),
        "umap_1": coords[:, 0], "umap_2": coords[:, 1]})
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path


def umap_from_config(cfg) -> Path:
    """Fit UMAP on ``umap.feature_file`` and write ``umap.png``, ``umap.html`` and ``umap.csv`` to
    ``umap.out_dir``.

    With ``umap.store_coords`` the coordinates are stored as ``obsm["X_umap"]`` in the feature
    file. Returns the output folder.
    """
    u = cfg.umap
    check_fit_on(u.fit_on)  # before the feature file is read
    path, out_dir = Path(u.feature_file), Path(u.out_dir)
    fs = read_features(path, obsm=u.obsm != "X")
    X = fs.features(u.obsm)
    logger.info("UMAP of %s[%s]: %d cells x %d features (fit on %s; the first map in a process "
                "compiles UMAP's numba code first)", path, u.obsm, *X.shape, u.fit_on)
    try:
        coords = fit_umap(X, fs.domains, int(cfg.seed), int(u.n_neighbors), float(u.min_dist),
                          str(u.fit_on), list(u.source_domains))
    except ValueError as exc:
        raise FeatureFileError(f"{path}: {exc}") from exc
    fitted = "all cells" if u.fit_on == "all" else f"fit on {', '.join(u.source_domains)}"
    title = f"UMAP of {path.name} [{u.obsm}] ({fitted}; n_neighbors={u.n_neighbors}, " \
            f"min_dist={u.min_dist}, seed={cfg.seed})"
    plot_png(coords, fs.domains, fs.labels, out_dir / "umap.png", title)
    manifest = OmegaConf.select(OmegaConf.create(str(fs.uns.get("config", "{}"))),
                                "data.manifest")
    predictions = None
    if u.predictions:
        table = pd.read_csv(u.predictions, keep_default_na=False)
        table["cell_id"] = table["cell_id"].astype(str)
        predictions = table.set_index("cell_id")[["predicted"]].astype(str)
        scores = [c for c in table.columns if c.startswith("p_")]
        if scores:  # the model's probability of the class it predicted
            predictions["confidence"] = table[scores].max(axis=1).to_numpy()
    write_explorer(coords, fs.obs, Path(manifest).parent if manifest else None,
                   out_dir / "umap.html", title, max_cells=int(u.html_max_cells),
                   thumb_px=int(u.thumbnail_px), predictions=predictions, seed=int(cfg.seed))
    _write_coordinates(out_dir / "umap.csv", coords, fs.obs, predictions)
    if u.store_coords:
        add_obsm(path, "X_umap", coords)
        logger.info("UMAP coordinates stored in %s as obsm['X_umap']", path)
    logger.info("UMAP plots written to %s (umap.png, umap.html, umap.csv)", out_dir)
    return out_dir
