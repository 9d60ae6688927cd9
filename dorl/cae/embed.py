"""Stage 1 end to end (``make embed``): data -> LoRA-SAM -> segmentation -> CAE -> features.h5ad.

:func:`run_embed` reuses a finished feature file whose ``uns/signature`` matches this run and
refuses one made by another config or dataset. :func:`embed_segmentation` is the part after
segmentation: it trains the cross-domain autoencoder under the configured protocol, encodes every
cell and writes the feature file with its provenance and domain-invariance figures.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from dorl import __version__
from dorl.artifacts import CAE_CHECKPOINT, FEATURE_FILE, reusable
from dorl.cae.invariance import CELLS_PER_DOMAIN, domain_invariance, plot_invariance
from dorl.cae.settings import CAESettings
from dorl.cae.train import CAEData, TrainResult, encode_cells, train_cae
from dorl.config import ConfigError, resolved_yaml
from dorl.data.manifest import Manifest
from dorl.data.taxonomy import label_space
from dorl.device import get_device
from dorl.distributed import ProcessGroup, init_from_env
from dorl.domain_scaler import DomainStandardScaler
from dorl.featstore import (
    OBS_COLUMNS,
    FeatureFileError,
    FeatureSet,
    stored_signature,
    write_features,
)
from dorl.features.encode import domain_sample, features_from_config
from dorl.provenance import package_versions, sha256_file, utc_now
from dorl.row_sources import ConcatenatedRows, MappedRows, RowSource, blocks, take
from dorl.sam.segmentation import Segmentation

logger = logging.getLogger(__name__)

FEATURES_FILE = "features.h5ad"


def feature_signature(cfg, manifest: Manifest) -> dict[str, str]:
    """What a feature file must have been made with to be reused: the data and the config keys
    of :data:`dorl.artifacts.FEATURE_FILE`, one hash per config section (``config.cae``, ...)."""
    return {"data": manifest.signature(),
            **{f"config.{k}": v for k, v in FEATURE_FILE.parts(cfg).items()}}


def load_data(cfg) -> Manifest:
    """The run's manifest; the synthetic default dataset is generated when there is none.

    With ``data.on_bad_image=skip``, unreadable images are dropped and listed in
    ``run_dir/skipped_images.csv``.
    """
    from dorl.data.manifest import drop_unreadable
    from dorl.data.readers import manifest_from_config

    if not Path(cfg.data.manifest).is_file() and not cfg.data.sources:
        from dorl.data.synth.generate import generate_from_config

        logger.info("no manifest at %s and no data.sources: generating the synthetic dataset",
                    cfg.data.manifest)
        return generate_from_config(cfg)
    return drop_unreadable(manifest_from_config(cfg), cfg.data.on_bad_image,
                           Path(cfg.run_dir) / "skipped_images.csv")


def finished(cfg, manifest: Manifest) -> bool:
    """Whether ``run_dir`` already holds this config's and data's feature file.

    Raises
    ------
    FeatureFileError
        When it holds one made by another config or dataset (it is never overwritten).
    """
    out = Path(cfg.run_dir) / FEATURES_FILE
    return reusable(FEATURE_FILE, out, stored_signature(out), feature_signature(cfg, manifest),
                    refuse=True, error=FeatureFileError)


def run_embed(cfg) -> Path:
    """Run stage 1 and return the path of ``run_dir/features.h5ad``.

    Under ``torchrun`` the ranks share fine-tuning and segmentation (:mod:`dorl.distributed`);
    rank 0 writes the feature file.

    Raises
    ------
    FeatureFileError
        When ``run_dir`` holds a feature file made by another config or dataset.
    """
    out = Path(cfg.run_dir) / FEATURES_FILE
    group = init_from_env(get_device(cfg.device))
    # Rank 0 reads (or generates) the data first, so that the other ranks find it on disk.
    manifest = load_data(cfg) if group.is_main else None
    group.barrier()
    if manifest is None:
        manifest = load_data(cfg)
    if finished(cfg, manifest):
        return out
    from dorl.sam.finetune import finetune_from_config
    from dorl.sam.inference import segment_from_config

    t0 = time.perf_counter()
    adapter_dir = finetune_from_config(cfg, manifest, group)
    t1 = time.perf_counter()
    seg = segment_from_config(cfg, manifest, adapter_dir, group)
    t2 = time.perf_counter()
    cell_feats = features_from_config(cfg, manifest, seg, group)
    t3 = time.perf_counter()
    if group.is_main or cfg.cae.enabled:  # every rank trains the autoencoder; 0 writes
        embed_segmentation(cfg, manifest, seg, cell_feats=cell_feats, group=group,
                           timings={"sam_finetune": t1 - t0, "segment": t2 - t1,
                                    "cell_features": t3 - t2})
    group.barrier()
    return out


def split_cells(cfg, manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    """Row indices the CAE trains and validates on, by protocol and manifest split.

    Transductive: every domain takes part (without labels). Inductive: ``cae.target_domains`` are
    left out entirely. Validation cells are those with split ``val``; when none of the training
    domains has any, a seeded ``cae.val_fraction`` of the training cells is used instead.
    """
    table = manifest.table
    domains = table["domain"].astype(str).to_numpy()
    protocol = cfg.cae.protocol
    targets = [str(d) for d in cfg.cae.target_domains]
    if protocol == "inductive":
        unknown = sorted(set(targets) - set(domains))
        if not targets or unknown:
            raise ConfigError(f"cae.protocol=inductive needs cae.target_domains naming domains of "
                             f"the manifest {sorted(set(domains))}; got {targets}")
        used = ~np.isin(domains, targets)
        if not used.any():
            raise ConfigError("cae.target_domains holds out every domain: nothing left to train on")
    elif protocol == "transductive":
        used = np.ones(len(table), dtype=bool)
    else:
        raise ConfigError(f"cae.protocol must be transductive or inductive, got {protocol!r}")
    is_val = table["split"].astype(str).to_numpy() == "val"
    if not (used & is_val).any():
        rng = np.random.default_rng(cfg.seed)
        is_val = rng.random(len(table)) < float(cfg.cae.val_fraction)
        logger.info("no manifest rows with split=val: validating the CAE on a random %.0f%%",
                    100 * cfg.cae.val_fraction)
    return np.flatnonzero(used & ~is_val), np.flatnonzero(used & is_val)


def _encoder_input(cfg, seg: Segmentation, cell_feats: dict[str, RowSource]) -> RowSource:
    """The features the CAE encoder reads: the configured cell encoders' features side by side,
    else the SAM features of the whole image that segmentation kept."""
    if cell_feats:
        if cfg.cae.arch == "transformer":
            raise ConfigError("cae.arch=transformer reads SAM's spatial tokens: set "
                              "features.encoders=[] or cae.arch=conv")
        parts = [cell_feats[k] for k in cfg.features.encoders]
        return parts[0] if len(parts) == 1 else ConcatenatedRows(parts)
    key = "sam_spatial" if cfg.cae.arch == "transformer" else "sam_pooled"
    if key not in seg.features:
        raise ConfigError(f"cae.arch={cfg.cae.arch} with cae.input={cfg.cae.input} needs "
                          f"segmentation features {key!r}, found {sorted(seg.features)}; "
                          f"set sam.infer.features accordingly")
    return seg.features[key]


def _domain_ids(manifest: Manifest) -> np.ndarray:
    """Each row's index into ``manifest.domains``."""
    return manifest.table["domain"].map(
        {d: i for i, d in enumerate(manifest.domains)}).to_numpy()


def _standardised_features(cfg, seg: Segmentation, cell_feats: dict[str, RowSource],
                           ids: np.ndarray) -> RowSource | None:
    """The encoder input features under ``cae.feature_norm`` (None when ``cae.input=crop``), as
    a row source of float32 rows: the per-domain statistics are fitted one block of rows at a
    time, and applied to each block when it is read."""
    if cfg.cae.input not in ("features", "both"):
        return None
    feats = _encoder_input(cfg, seg, cell_feats)
    if cfg.cae.feature_norm == "global":
        return MappedRows(feats, lambda block, rows: block.astype(np.float32), feats.shape,
                          np.float32)
    if cfg.cae.feature_norm != "per_domain":
        raise ConfigError(f"cae.feature_norm must be global or per_domain, got "
                          f"{cfg.cae.feature_norm!r}")
    scaler = DomainStandardScaler()
    for rows, block in blocks(feats):
        scaler.partial_fit(block.reshape(len(block), -1), domains=ids[rows])

    def standardise(block: np.ndarray, rows: np.ndarray) -> np.ndarray:
        flat = scaler.transform(block.reshape(len(block), -1), domains=ids[rows])
        return flat.reshape(block.shape).astype(np.float32)

    return MappedRows(feats, standardise, feats.shape, np.float32)


def _flat(source: RowSource) -> RowSource:
    """``source``'s rows flattened to (n, features)."""
    if len(source.shape) == 2:
        return source
    width = int(np.prod(source.shape[1:]))
    return MappedRows(source, lambda block, rows: block.reshape(len(block), width),
                      (len(source), width), source.dtype)


def _cae_data(cfg, manifest: Manifest, seg: Segmentation,
              cell_feats: dict[str, RowSource]) -> CAEData:
    """The CAE's cells: crops read from the segmentation store batch by batch (downsized to
    ``cae.image_size``), and the standardised features in memory (n x d)."""
    ids = _domain_ids(manifest)
    feats = _standardised_features(cfg, seg, cell_feats, ids)
    feats = None if feats is None else np.asarray(feats, dtype=np.float32)
    return CAEData(seg.crops, feats, ids.astype(np.int64), manifest.domains,
                   int(cfg.cae.image_size))


def embed_segmentation(cfg, manifest: Manifest, seg: Segmentation,
                       timings: dict[str, float] | None = None,
                       cell_feats: tuple[dict[str, np.ndarray], dict] | None = None,
                       autoencoder_from: Callable[[CAEData, torch.device], nn.Module] | None = None,
                       applied_from: dict | None = None,
                       group: ProcessGroup = ProcessGroup()) -> Path | None:
    """Train the CAE on segmented cells, embed them all and write ``run_dir/features.h5ad``.

    Parameters
    ----------
    cfg : DictConfig
    manifest : Manifest
        Rows aligned with ``seg``.
    seg : Segmentation
        Masked crops (n, s, s, 3), fallback flags and SAM features of every manifest row.
    timings : dict of str -> float, optional
        Seconds spent in earlier stages, recorded in the file's provenance.
    cell_feats : (features, meta), optional
        Cell features already computed for these settings (see
        :func:`dorl.features.encode.features_from_config`); computed here when not given.
    autoencoder_from : callable, optional
        ``(data, device) -> model``: a trained autoencoder that embeds the cells instead of a
        newly trained one (:func:`dorl.cae.apply.apply_run`).
    applied_from : dict, optional
        The provenance of the run whose trained parts are applied (``uns/applied_from``).
    group : ProcessGroup
        Under torchrun every rank calls this to train the autoencoder together
        (:func:`dorl.cae.train.train_cae`); only rank 0 embeds the cells and writes the file, and
        the others return None.
    """
    if len(seg) != len(manifest):
        raise ValueError(f"segmentation has {len(seg)} cells but the manifest has "
                         f"{len(manifest)} rows")
    run_dir = Path(cfg.run_dir)
    out = run_dir / FEATURES_FILE
    signature = feature_signature(cfg, manifest)
    timings = dict(timings or {})
    if cell_feats is None:
        t0 = time.perf_counter()
        cell_feats = features_from_config(cfg, manifest, seg)
        timings["cell_features"] = time.perf_counter() - t0
    cell_feats, cell_meta = cell_feats
    result, train_idx, val_idx = None, np.array([], int), np.array([], int)
    if cfg.cae.enabled:
        if autoencoder_from is None:
            train_idx, val_idx = split_cells(cfg, manifest)
        data = _cae_data(cfg, manifest, seg, cell_feats)
        device = get_device(cfg.device)
        if autoencoder_from is None:
            logger.info("CAE (%s, input %s, %s protocol): %d training and %d validation cells "
                        "of %d, %d px crops, device %s", cfg.cae.arch, cfg.cae.input,
                        cfg.cae.protocol, len(train_idx), len(val_idx), len(data),
                        data.side, device)
            t0 = time.perf_counter()
            train_sig = CAE_CHECKPOINT.signature(cfg, signature["data"],
                                                 seg.meta.get("signature", ""))
            result = train_cae(data, train_idx, val_idx, CAESettings.from_config(cfg.cae),
                               int(cfg.seed), run_dir / "cae", device, train_sig, group)
            model = result.model
            timings["cae_train"] = time.perf_counter() - t0
        else:
            model = autoencoder_from(data, device)
        if not group.is_main:
            return None
        t0 = time.perf_counter()
        X = encode_cells(model, data, device)
        timings["cae_encode"] = time.perf_counter() - t0
    else:
        feats = _standardised_features(cfg, seg, cell_feats, _domain_ids(manifest))
        if feats is None:
            raise ConfigError("cae.enabled=false embeds the cells by their features: set "
                              "cae.input to features or both")
        logger.info("autoencoder off (cae.enabled=false): the embedding is the %s-standardised "
                    "features", cfg.cae.feature_norm)
        X = _flat(feats)

    table = manifest.table
    obs = table[[c for c in OBS_COLUMNS if c in table.columns]].copy()
    obs["seg_fallback"] = np.asarray(seg.fallback, dtype=bool)
    obs.index = pd.Index(table["path"].astype(str), name="cell_id")
    obsm = {f"X_{k}": v for k, v in seg.features.items() if len(v.shape) == 2}
    obsm.update({f"X_{k}": v for k, v in cell_feats.items()})
    invariance = _invariance(cfg, X, obsm, obs, run_dir)
    in_training = np.zeros(len(table), dtype=bool)
    in_training[np.concatenate([train_idx, val_idx])] = True
    obs["cae_trained_on"] = in_training
    uns = _provenance(cfg, signature, seg, result, manifest.domains, timings)
    uns["invariance"] = invariance
    uns["cell_features"] = {k: v for k, v in cell_meta.items() if k != "timings_s"}
    if applied_from is not None:
        uns["applied_from"] = applied_from
        if "cae_checkpoint" in applied_from["hashes"]:
            uns["hashes"]["cae_checkpoint"] = applied_from["hashes"]["cae_checkpoint"]
    return write_features(out, FeatureSet(X, obs, obsm, uns))


def _provenance(cfg, signature: dict[str, str], seg: Segmentation, result: TrainResult | None,
                domains: list[str], timings: dict[str, float]) -> dict:
    """The feature file's ``uns``: signature, config, versions, hashes, protocol, labels
    (``result`` is None when the autoencoder is off)."""
    cae = {} if result is None else {"cae_checkpoint": sha256_file(result.checkpoint)}
    training = None if result is None else {
        "best_epoch": result.best_epoch, "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "best_val_reconstruction": result.history[result.best_epoch]["val_recon"]}
    return {
        "signature": signature,
        "created_utc": utc_now(),
        "config": resolved_yaml(cfg),
        "versions": package_versions(),
        "data_signature": signature["data"],
        "protocol": str(cfg.cae.protocol),
        "target_domains": [str(d) for d in cfg.cae.target_domains],
        "label_space": str(cfg.data.label_space),
        "label_order": list(label_space(cfg.data.label_space)),
        "domains": list(domains),
        "hashes": {**cae,
                   **{k: str(v) for k, v in seg.meta.items() if v is not None
                      and ("hash" in k or "sha256" in k or k == "signature")}},
        "segmentation": {k: v for k, v in seg.meta.items()
                         if isinstance(v, (str, int, float, bool))},
        "cae_training": training,
        "timings_s": timings,
        "dorl_version": __version__,
    }


def _invariance(cfg, X: RowSource, obsm: dict[str, RowSource], obs: pd.DataFrame,
                run_dir: Path) -> dict:
    """Domain-invariance figures of the embedding (X) and of each stored feature set (obsm), on
    up to :data:`~dorl.cae.invariance.CELLS_PER_DOMAIN` cells of each domain."""
    domains, labels = obs["domain"].astype(str).to_numpy(), obs["label"].astype(str).to_numpy()
    if len(np.unique(domains)) < 2:
        return {}
    sample = domain_sample(domains, CELLS_PER_DOMAIN)
    domains, labels = domains[sample], labels[sample]
    sets = {name: take(v, sample).reshape(len(sample), -1).astype(np.float32)
            for name, v in {"embedding": X, **{k[2:]: v for k, v in obsm.items()}}.items()}
    results = {name: domain_invariance(v, domains, labels, int(cfg.seed))
               for name, v in sets.items()}
    for name, r in results.items():
        logger.info("invariance of %s: MMD^2 %.4f, domain classifier %.3f (chance %.3f), "
                    "cross-domain macro-F1 %.3f", name, r["mmd"], r["domain_clf_acc"],
                    r["domain_clf_chance"], r["cross_domain_macro_f1"])
    plot_invariance(results, sets, domains, run_dir / "invariance.png")
    return results
