"""Stage 1 end to end (``make embed``): data -> LoRA-SAM -> segmentation -> cross-domain
autoencoder (the cell encoder adapts to every lab's cells) -> cell features -> features.h5ad.

:func:`run_embed` checks every setting of the stage before any work, reuses a finished feature
file whose ``uns/signature`` matches this run and refuses one made by another config or dataset.
:func:`embed_segmentation` is the part after the cell features: it standardises them per domain
and writes the feature file with its provenance and domain-invariance figures.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dorl import __version__
from dorl.artifacts import CAE_CHECKPOINT, FEATURE_FILE, reusable
from dorl.cae.settings import CAESettings
from dorl.cae.train import TrainResult
from dorl.config import ConfigError, resolved_yaml
from dorl.data.manifest import Manifest
from dorl.data.taxonomy import label_space
from dorl.device import get_device, release_memory
from dorl.distributed import init_from_env
from dorl.domain_scaler import DomainStandardScaler
from dorl.featstore import (
    OBS_COLUMNS,
    FeatureFileError,
    FeatureSet,
    stored_signature,
    write_features,
)
from dorl.features.encode import FeatureSettings, domain_sample, features_from_config
from dorl.pipeline.encoder_training import domain_ids, train_encoder, training_rows
from dorl.pipeline.invariance import CELLS_PER_DOMAIN, domain_invariance, plot_invariance
from dorl.provenance import package_versions, utc_now
from dorl.row_sources import ConcatenatedRows, MappedRows, RowSource, blocks, take
from dorl.sam.inference import SegmentSettings
from dorl.sam.quality import QCSettings, cell_quality
from dorl.sam.segmentation import Segmentation

logger = logging.getLogger(__name__)

FEATURES_H5AD = "features.h5ad"


#: ``features.standardise``: each domain standardised with its own statistics, or as encoded.
STANDARDISE = ("per_domain", "none")


def feature_signature(cfg, manifest: Manifest) -> dict[str, str]:
    """What a feature file must have been made with to be reused: the data and the config keys
    of :data:`dorl.artifacts.FEATURE_FILE`, one hash per config section (``config.features``,
    ...). ``cae`` counts only when the autoencoder runs."""
    parts = FEATURE_FILE.parts(cfg)
    if not cfg.cae.enabled:
        parts = {k: v for k, v in parts.items() if k != "cae"}
    return {"data": manifest.signature(), **{f"config.{k}": v for k, v in parts.items()}}


@dataclass(frozen=True)
class EmbedSettings:
    """Every setting of stage 1, built from the config once, when a command starts."""

    segment: SegmentSettings
    features: FeatureSettings
    qc: QCSettings
    #: None while ``cae.enabled`` is false.
    cae: CAESettings | None


def check_settings(cfg) -> EmbedSettings:
    """Build and check the stage's settings before any work (one line per bad value).

    Raises
    ------
    ConfigError
    """
    features = FeatureSettings.from_config(cfg)
    segment = SegmentSettings.from_config(cfg)
    if not features.encoders:
        raise ConfigError("features.encoders is empty: the embedding is the cell encoders' "
                          "features")
    if cfg.features.standardise not in STANDARDISE:
        raise ConfigError(f"features.standardise must be one of {list(STANDARDISE)}, got "
                          f"{cfg.features.standardise!r}")
    return EmbedSettings(segment, features, QCSettings.from_config(cfg),
                         CAESettings.from_config(cfg) if cfg.cae.enabled else None)


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
    out = Path(cfg.run_dir) / FEATURES_H5AD
    return reusable(FEATURE_FILE, out, stored_signature(out), feature_signature(cfg, manifest),
                    refuse=True, error=FeatureFileError)


def run_embed(cfg) -> Path:
    """Run stage 1 and return the path of ``run_dir/features.h5ad``.

    Under ``torchrun`` the ranks share fine-tuning, segmentation, the autoencoder's training and
    the cell features (:mod:`dorl.distributed`); rank 0 writes the feature file.

    Raises
    ------
    ConfigError
        For a bad setting, before any work.
    FeatureFileError
        When ``run_dir`` holds a feature file made by another config or dataset.
    """
    settings = check_settings(cfg)
    out = Path(cfg.run_dir) / FEATURES_H5AD
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

    timings = {}
    t0 = time.perf_counter()
    adapter_dir = finetune_from_config(cfg, manifest, group)
    timings["sam_finetune"] = time.perf_counter() - t0
    release_memory()  # each stage's peak on its own, not on the last stage's leftovers
    t0 = time.perf_counter()
    seg = segment_from_config(cfg, manifest, adapter_dir, settings.segment, group)
    timings["segment"] = time.perf_counter() - t0
    release_memory()
    cae = None
    if settings.cae is not None:
        t0 = time.perf_counter()
        cae = train_encoder(manifest, seg, settings.cae, Path(cfg.run_dir) / "cae",
                            int(cfg.seed), get_device(cfg.device),
                            CAE_CHECKPOINT.signature(cfg, manifest.signature(),
                                                     seg.meta.get("signature", "")), group)
        timings["cae_train"] = time.perf_counter() - t0
        release_memory()
    t0 = time.perf_counter()
    cell_feats = features_from_config(
        cfg, manifest, seg, settings.features, group,
        None if cae is None else (cae.checkpoint, cae.sha256))
    timings["cell_features"] = time.perf_counter() - t0
    if group.is_main:
        embed_segmentation(cfg, manifest, seg, cell_feats, settings, timings, cae)
    group.barrier()
    return out


def _standardised(standardise: str, features: RowSource, ids: np.ndarray) -> RowSource:
    """The features under ``standardise`` (``features.standardise``), as a row source of float32
    rows: the per-domain statistics are fitted one block of rows at a time, and applied to each
    block when it is read."""
    if standardise == "none":
        return MappedRows(features, lambda block, rows: block.astype(np.float32),
                          features.shape, np.float32)
    scaler = DomainStandardScaler()
    for rows, block in blocks(features):
        scaler.partial_fit(block, domains=ids[rows])

    def standardise(block: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return scaler.transform(block, domains=ids[rows]).astype(np.float32)

    return MappedRows(features, standardise, features.shape, np.float32)


def embed_segmentation(cfg, manifest: Manifest, seg: Segmentation,
                       cell_feats: tuple[dict[str, RowSource], dict], settings: EmbedSettings,
                       timings: dict[str, float] | None = None,
                       cae: TrainResult | None = None,
                       applied_from: dict | None = None) -> Path:
    """Standardise the cell features and write ``run_dir/features.h5ad``.

    Parameters
    ----------
    cfg : DictConfig
    manifest : Manifest
        Rows aligned with ``seg``.
    seg : Segmentation
        Fallback flags and SAM features of every manifest row.
    cell_feats : (features, meta)
        The cell features of every row and their provenance
        (:func:`dorl.features.encode.features_from_config`).
    settings : EmbedSettings
        As :func:`check_settings` built them (the quality checks, and which cells the encoder
        trained on).
    timings : dict of str -> float, optional
        Seconds spent in earlier stages, recorded in the file's provenance.
    cae : TrainResult, optional
        The adapted encoder the features were made with (None: the pretrained one).
    applied_from : dict, optional
        The provenance of the run whose trained parts are applied (``uns/applied_from``).
    """
    if len(seg) != len(manifest):
        raise ValueError(f"segmentation has {len(seg)} cells but the manifest has "
                         f"{len(manifest)} rows")
    run_dir = Path(cfg.run_dir)
    signature = feature_signature(cfg, manifest)
    feats, cell_meta = cell_feats
    parts = [feats[k] for k in cfg.features.encoders]
    X = _standardised(str(cfg.features.standardise),
                      parts[0] if len(parts) == 1 else ConcatenatedRows(parts),
                      domain_ids(manifest))
    logger.info("the embedding: %s features of %s, standardised %s",
                "adapted" if cae is not None or applied_from else "pretrained",
                list(cfg.features.encoders), cfg.features.standardise)
    table = manifest.table
    obs = table[[c for c in OBS_COLUMNS if c in table.columns]].copy()
    obs["seg_fallback"] = np.asarray(seg.fallback, dtype=bool)
    obs["qc_pass"], obs["qc_reason"] = cell_quality(manifest, seg, settings.qc)
    failed = obs.loc[~obs["qc_pass"]].groupby("domain")["qc_reason"].value_counts()
    if len(failed):
        logger.warning("quality control: %d of %d cells failed (%s); they are embedded, never "
                       "trained or scored on by default", int((~obs["qc_pass"]).sum()), len(obs),
                       ", ".join(f"{d} {r}: {c}" for (d, r), c in failed.items()))
    obs.index = pd.Index(table["path"].astype(str), name="cell_id")
    obsm = {f"X_{k}": v for k, v in seg.features.items() if len(v.shape) == 2}
    obsm.update({f"X_{k}": v for k, v in feats.items()})
    invariance = _invariance(X, obsm, obs, run_dir, int(cfg.seed))
    in_training = np.zeros(len(table), dtype=bool)
    if cae is not None and settings.cae is not None:
        in_training[training_rows(manifest, settings.cae)] = True
    obs["cae_trained_on"] = in_training
    uns = _provenance(cfg, signature, seg, cae, manifest.domains, dict(timings or {}))
    uns["invariance"] = invariance
    uns["qc_failed"] = {str(r): int(c) for r, c in obs["qc_reason"][~obs["qc_pass"]]
                        .value_counts().items()}
    uns["cell_features"] = {k: v for k, v in cell_meta.items() if k != "timings_s"}
    if applied_from is not None:
        uns["applied_from"] = applied_from
        if "cae_encoder" in applied_from["hashes"]:
            uns["hashes"]["cae_encoder"] = applied_from["hashes"]["cae_encoder"]
    return write_features(run_dir / FEATURES_H5AD, FeatureSet(X, obs, obsm, uns))


def _provenance(cfg, signature: dict[str, str], seg: Segmentation, result: TrainResult | None,
                domains: list[str], timings: dict[str, float]) -> dict:
    """The feature file's ``uns``: signature, config, versions, hashes, protocol, labels
    (``result`` is None when no encoder was trained here)."""
    cae = {} if result is None else {"cae_encoder": result.sha256}
    training = None if result is None else {
        "epochs_run": len(result.history),
        # One list per loss term, an entry per epoch (uns holds arrays, not records).
        "history": {k: [float(h[k]) for h in result.history] for k in result.history[0]},
        "seconds": float(sum(h["seconds"] for h in result.history))}
    return {
        "signature": signature,
        "created_utc": utc_now(),
        "config": resolved_yaml(cfg),
        "versions": package_versions(),
        "data_signature": signature["data"],
        "protocol": str(cfg.cae.protocol) if cfg.cae.enabled else "none",
        "target_domains": [str(d) for d in cfg.cae.target_domains] if cfg.cae.enabled else [],
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


def _invariance(X: RowSource, obsm: dict[str, RowSource], obs: pd.DataFrame, run_dir: Path,
                seed: int) -> dict:
    """Domain-invariance figures of the embedding (X) and of each stored feature set (obsm), on
    up to :data:`~dorl.pipeline.invariance.CELLS_PER_DOMAIN` cells of each domain."""
    domains, labels = obs["domain"].astype(str).to_numpy(), obs["label"].astype(str).to_numpy()
    if len(np.unique(domains)) < 2:
        return {}
    sample = domain_sample(domains, CELLS_PER_DOMAIN)
    domains, labels = domains[sample], labels[sample]
    sets = {name: take(v, sample).reshape(len(sample), -1).astype(np.float32)
            for name, v in {"embedding": X, **{k[2:]: v for k, v in obsm.items()}}.items()}
    results = {name: domain_invariance(v, domains, labels, seed)
               for name, v in sets.items()}
    for name, r in results.items():
        logger.info("invariance of %s: MMD^2 %.4f, domain classifier %.3f (chance %.3f), "
                    "cross-domain macro-F1 %.3f", name, r["mmd"], r["domain_clf_acc"],
                    r["domain_clf_chance"], r["cross_domain_macro_f1"])
    plot_invariance(results, sets, domains, run_dir / "invariance.png")
    return results
