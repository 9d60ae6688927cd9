"""Hand-crafted baseline features computed straight from cell images, with no learned model.

Two baselines that any learned embedding must beat to be worth its cost:

* :func:`colour_texture_features`: colour histograms in HSV, colour moments in CIE Lab, and
  grey-level texture (rotation-invariant uniform LBP histogram and angle-averaged GLCM
  statistics). Every part is computed on the whole image, so it is invariant (up to float
  rounding) to 90-degree rotations and mirror flips of a square image.
* :func:`pixel_pca_features`: the image downsampled to a few pixels per side, flattened and
  projected on principal components fitted on the source cells only (inductive) or on all cells.

Both take a sequence of RGB uint8 images of shape (H, W, 3), of any size, as
:func:`dorl.data.images.read_rgb` returns them, or one array of shape (n, H, W, 3).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from skimage.color import rgb2hsv, rgb2lab
from skimage.feature import graycomatrix, graycoprops, local_binary_pattern
from sklearn.decomposition import PCA
from tqdm.auto import tqdm

from dorl.resize import resize_image

logger = logging.getLogger(__name__)

HSV_BINS = (16, 8, 8)
LBP_POINTS = 8
LBP_RADIUS = 1.0
GLCM_LEVELS = 32
GLCM_DISTANCES = (1, 3)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")


def resize_images(images: Sequence[np.ndarray] | np.ndarray, size: int) -> np.ndarray:
    """Resize every image to ``size`` x ``size`` px (:func:`dorl.resize.resize_image`).

    Parameters
    ----------
    images : sequence of uint8 ndarray (H, W, 3), or uint8 ndarray (n, H, W, 3)
    size : int
        Output side in pixels.

    Returns
    -------
    uint8 ndarray of shape (n, size, size, 3)
    """
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"image {i}: expected an RGB uint8 array (H, W, 3), got dtype "
                             f"{img.dtype} and shape {img.shape}")
        out[i] = img if img.shape[:2] == (size, size) else resize_image(img, size)
    return out


def feature_names() -> list[str]:
    """Names of the columns :func:`colour_texture_features` returns, in order."""
    names = [f"hsv_{ch}{b:02d}" for ch, n in zip("hsv", HSV_BINS) for b in range(n)]
    names += [f"lab_{ch}_{stat}" for ch in "Lab" for stat in ("mean", "std")]
    names += [f"lbp_{b:02d}" for b in range(LBP_POINTS + 2)]
    names += [f"glcm_{prop}_d{d}" for prop in GLCM_PROPS for d in GLCM_DISTANCES]
    return names


def _one_image_features(img: np.ndarray) -> np.ndarray:
    """Colour + texture vector of one RGB uint8 image (H, W, 3); see :func:`feature_names`."""
    hsv = rgb2hsv(img).reshape(-1, 3)
    parts = []
    for ch, bins in enumerate(HSV_BINS):
        hist, _ = np.histogram(hsv[:, ch], bins=bins, range=(0.0, 1.0))
        parts.append(hist / hsv.shape[0])
    lab = rgb2lab(img).reshape(-1, 3)
    parts.append(np.stack([lab.mean(0), lab.std(0)], axis=1).ravel())
    grey = np.round(img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    lbp = local_binary_pattern(grey, LBP_POINTS, LBP_RADIUS, method="uniform")
    hist, _ = np.histogram(lbp, bins=LBP_POINTS + 2, range=(0, LBP_POINTS + 2))
    parts.append(hist / lbp.size)
    quant = (grey.astype(np.uint16) * GLCM_LEVELS // 256).astype(np.uint8)
    glcm = graycomatrix(quant, distances=list(GLCM_DISTANCES), angles=list(GLCM_ANGLES),
                        levels=GLCM_LEVELS, symmetric=True, normed=True)
    # Averaging over the four angles makes the statistics invariant to 90-degree turns and flips.
    parts.append(np.stack([graycoprops(glcm, p).mean(axis=1) for p in GLCM_PROPS]).ravel())
    return np.concatenate(parts)


def colour_texture_features(images: Sequence[np.ndarray] | np.ndarray, size: int = 128,
                            progress: bool = True) -> np.ndarray:
    """Colour histogram + texture features of each image.

    Each image is first resized to ``size`` px so that images of different sizes are described
    at the same scale. Columns (see :func:`feature_names`): HSV histograms (16 hue, 8
    saturation, 8 value bins, each summing to 1), Lab mean and standard deviation per channel,
    the rotation-invariant uniform LBP histogram (P=8, R=1; 10 bins summing to 1) of the grey
    image, and GLCM contrast, dissimilarity, homogeneity, energy and correlation at distances 1
    and 3 on 32 grey levels, averaged over 0, 45, 90 and 135 degrees.

    Invariances: a 90-degree rotation or a mirror flip of a square image leaves the vector
    unchanged up to float rounding; the features are deterministic (no randomness).

    Parameters
    ----------
    images : sequence of uint8 ndarray (H, W, 3), or uint8 ndarray (n, H, W, 3)
    size : int
        Side the images are resized to before description.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    float32 ndarray of shape (n, 58)
    """
    if len(images) == 0:
        raise ValueError("colour_texture_features: no images given")
    resized = resize_images(images, size)
    rows = [_one_image_features(img) for img in tqdm(resized, desc="colour+texture", unit="img",
                                                     disable=not progress)]
    return np.stack(rows).astype(np.float32)


def pixel_pca_features(images: Sequence[np.ndarray] | np.ndarray, n_components: int, seed: int,
                       fit_mask: np.ndarray | None = None, size: int = 32) -> np.ndarray:
    """Raw pixels, downsampled and projected on principal components.

    Each image is resized to ``size`` x ``size`` RGB, scaled to [0, 1] and flattened
    (``3 * size**2`` values); a PCA (randomized SVD seeded by ``seed``) is fitted on the rows
    selected by ``fit_mask`` and applied to every row.

    Parameters
    ----------
    images : sequence of uint8 ndarray (H, W, 3), or uint8 ndarray (n, H, W, 3)
    n_components : int
        Number of principal components kept (k).
    seed : int
        Seed of the randomized SVD; the same inputs and seed give identical outputs.
    fit_mask : bool ndarray of shape (n,), optional
        Rows the PCA is fitted on, e.g. the source-domain cells for an inductive baseline that
        never sees target images. None fits on every row (transductive).
    size : int
        Side of the downsampled image.

    Returns
    -------
    float32 ndarray of shape (n, n_components)
    """
    if len(images) == 0:
        raise ValueError("pixel_pca_features: no images given")
    flat = resize_images(images, size).reshape(len(images), -1).astype(np.float32) / 255.0
    fit_rows = flat
    if fit_mask is not None:
        fit_mask = np.asarray(fit_mask, dtype=bool)
        if fit_mask.shape != (len(flat),):
            raise ValueError(f"fit_mask has shape {fit_mask.shape}; expected ({len(flat)},), "
                             f"one flag per image")
        fit_rows = flat[fit_mask]
    limit = min(fit_rows.shape)
    if not 1 <= n_components <= limit:
        raise ValueError(f"n_components={n_components} must be between 1 and {limit} (the number "
                         f"of fitted images or pixels values, whichever is smaller)")
    pca = PCA(n_components=n_components, svd_solver="randomized", random_state=seed)
    pca.fit(fit_rows)
    logger.info("pixel PCA: %d components explain %.1f%% of the variance of %d fitted images",
                n_components, 100 * pca.explained_variance_ratio_.sum(), len(fit_rows))
    return pca.transform(flat).astype(np.float32)
