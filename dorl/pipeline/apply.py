"""Embed a new lab's cells with a finished run's trained parts, training nothing.

A finished ``dorl embed`` run holds everything the embedding depends on: its resolved config
(in the feature file's ``uns``), the LoRA adapter that segments and the adapted cell encoder
(when the autoencoder is on). :func:`apply_run` segments the new cells with that adapter and
computes their features with that encoder, so that the new file lies in the run's embedding
space and a model saved by ``dorl classify run`` on the run applies to it.

What is estimated from the new lab's own cells, without labels, is what a lab's appearance
shifts: the encoders' BatchNorm statistics (``features.adabn``) and the per-domain feature
standardisation. Each new domain needs :data:`NEW_DOMAIN_MIN_CELLS` cells for those
(docs/history/runs-a-to-m.md, "How many cells a new lab needs").
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from dorl.cae.train import ENCODER_FILE
from dorl.config import ConfigError, save_resolved
from dorl.device import get_device, resolve_bf16
from dorl.featstore import FeatureFileError, read_features
from dorl.provenance import sha256_file

logger = logging.getLogger(__name__)

#: Cells a new domain needs for its own statistics: the smallest count whose per-domain
#: standardisation scored within 0.02 macro-F1 of using every cell (docs/history/runs-a-to-m.md).
NEW_DOMAIN_MIN_CELLS = 20
#: What ``dorl apply`` takes from the user's config; every other key comes from the run.
USER_KEYS = ("data", "run_dir", "device", "num_threads")


@dataclass(frozen=True)
class SourceRun:
    """A finished run's trained parts, checked against the hashes its feature file recorded.

    Attributes
    ----------
    run_dir : Path
    cfg : DictConfig
        The resolved config the run was embedded with.
    uns : dict
        Its feature file's provenance.
    features_sha256 : str
    adapter_dir : Path or None
        The LoRA adapter its segmentation used (None: zero-shot SAM).
    cae_encoder : Path or None
        The adapted encoder's weights (None when the autoencoder was off).
    """

    run_dir: Path
    cfg: DictConfig
    uns: dict
    features_sha256: str
    adapter_dir: Path | None
    cae_encoder: Path | None

    @classmethod
    def open(cls, run_dir: str | Path) -> "SourceRun":
        """Read ``run_dir/features.h5ad`` and find its adapter and adapted encoder.

        Raises
        ------
        FeatureFileError
            When the run has no feature file, or its adapter or checkpoint is missing or is not
            the one its feature file was made with.
        """
        from dorl.pipeline.embed import FEATURES_H5AD
        from dorl.sam.inference import adapter_hash

        run_dir = Path(run_dir)
        path = run_dir / FEATURES_H5AD
        if not path.is_file():
            raise FeatureFileError(f"{run_dir}: no {FEATURES_H5AD}; finish `dorl embed` there "
                                   f"first")
        uns = read_features(path).uns
        if "config" not in uns:
            raise FeatureFileError(f"{path}: holds no resolved config (not made by dorl embed)")
        cfg = OmegaConf.create(str(uns["config"]))
        seg = dict(uns.get("segmentation", {}))
        adapter = seg.get("adapter")
        adapter_dir = None
        if adapter not in (None, "", "None"):
            # A run folder copied from another lab or disk records the adapter's old path: the
            # copy inside the run folder is the one that belongs to it.
            adapter_dir = run_dir / Path(adapter).name
            if not adapter_dir.is_dir():
                adapter_dir = Path(adapter)
            if not adapter_dir.is_dir() or adapter_hash(adapter_dir) != seg.get("adapter_hash"):
                raise FeatureFileError(f"{path}: its LoRA adapter {adapter} is missing or was "
                                       f"changed (hash {seg.get('adapter_hash')})")
        encoder = None
        if cfg.cae.enabled:
            encoder = run_dir / "cae" / ENCODER_FILE
            expected = dict(uns.get("hashes", {})).get("cae_encoder")
            if not encoder.is_file() or sha256_file(encoder) != expected:
                raise FeatureFileError(f"{path}: its adapted encoder {encoder} is missing or "
                                       f"was changed")
        return cls(run_dir, cfg, uns, sha256_file(path), adapter_dir, encoder)

    def provenance(self) -> dict:
        """What the applied feature file records of this run (``uns/applied_from``)."""
        return {"run_dir": str(self.run_dir), "features_sha256": self.features_sha256,
                "signature": dict(self.uns.get("signature", {})),
                "hashes": dict(self.uns.get("hashes", {})),
                "created_utc": str(self.uns.get("created_utc", ""))}


def applied_config(source: SourceRun, user_cfg):
    """The run's config with the user's :data:`USER_KEYS` (the new data and output folder), at
    the resolution and bfloat16 precision the run's cells were embedded with.

    Raises
    ------
    ConfigError
        When the output folder is the run's own, or the label space differs from the run's.
    """
    out = Path(user_cfg.run_dir)
    if out.resolve() == source.run_dir.resolve():
        raise ConfigError(f"run_dir {out} is the applied run's own folder: choose another "
                          f"run_dir for the new lab's features")
    if str(user_cfg.data.label_space) != str(source.cfg.data.label_space):
        raise ConfigError(f"data.label_space {user_cfg.data.label_space!r} differs from the "
                          f"label space {source.cfg.data.label_space!r} of {source.run_dir}")
    cfg = OmegaConf.create(OmegaConf.to_container(source.cfg, resolve=True))
    user = OmegaConf.to_container(user_cfg, resolve=True)
    for key in USER_KEYS:
        OmegaConf.update(cfg, key, user[key], merge=False)
    side = source.uns.get("cell_features", {}).get("resolution_side")
    if side is not None:
        # The new lab's cells are seen at the resolution the run's cells were, not at the
        # coarsest of the new lab's own domains.
        OmegaConf.update(cfg, "features.resolution", int(side), merge=False)
    device = get_device(cfg.device)
    for key, recorded in (("sam.infer.bf16", source.uns.get("segmentation", {}).get("bf16")),
                          ("features.bf16", source.uns.get("cell_features", {}).get("bf16"))):
        # bfloat16 moves the embedding (on the real bench 8% of LISC's predictions change
        # against float32): a machine whose `auto` resolves otherwise than the run's computes
        # the new lab at the run's precision, emulated bfloat16 included.
        if recorded is not None and resolve_bf16(OmegaConf.select(cfg, key), device) != recorded:
            logger.info("%s=%s, as %s was embedded", key, bool(recorded), source.run_dir)
            OmegaConf.update(cfg, key, bool(recorded), merge=False)
    return cfg


def check_domain_sizes(domains: np.ndarray, where: str) -> None:
    """Refuse domains with fewer than :data:`NEW_DOMAIN_MIN_CELLS` cells.

    Raises
    ------
    ConfigError
        Naming the domains, their sizes and ``where`` they come from.
    """
    names, counts = np.unique(np.asarray(domains).astype(str), return_counts=True)
    small = {str(n): int(c) for n, c in zip(names, counts) if c < NEW_DOMAIN_MIN_CELLS}
    if small:
        raise ConfigError(f"{where}: domain(s) {small} have fewer than {NEW_DOMAIN_MIN_CELLS} "
                          f"cells; a new lab's BatchNorm and standardisation statistics come from "
                          f"its own cells and need at least {NEW_DOMAIN_MIN_CELLS} per domain")


def apply_run(run_dir: str | Path, user_cfg) -> Path:
    """Embed the cells of ``user_cfg.data`` with the trained parts of ``run_dir``.

    Parameters
    ----------
    run_dir : str or Path
        A finished ``dorl embed`` run.
    user_cfg : DictConfig
        Its :data:`USER_KEYS` name the new cells and where their features go.

    Returns
    -------
    Path
        ``user_cfg.run_dir/features.h5ad``; its ``uns/applied_from`` names the run, its
        signature and hashes.
    """
    from dorl.features.encode import features_from_config
    from dorl.pipeline.embed import (
        FEATURES_H5AD,
        check_settings,
        embed_segmentation,
        finished,
        load_data,
    )
    from dorl.sam.inference import segment_from_config

    source = SourceRun.open(run_dir)
    cfg = applied_config(source, user_cfg)
    settings = check_settings(cfg)
    save_resolved(cfg, cfg.run_dir, "config.apply.yaml")
    out = Path(cfg.run_dir) / FEATURES_H5AD
    manifest = load_data(cfg)
    check_domain_sizes(manifest.table["domain"].to_numpy(), str(cfg.data.manifest))
    if finished(cfg, manifest):
        return out
    logger.info("applying %s (adapter %s, encoder %s) to %d cells of %s; nothing is trained",
                source.run_dir, source.adapter_dir, source.cae_encoder or "pretrained",
                len(manifest), manifest.domains)
    t0 = time.perf_counter()
    seg = segment_from_config(cfg, manifest, source.adapter_dir, settings.segment)
    t1 = time.perf_counter()
    encoder = None if source.cae_encoder is None else (
        source.cae_encoder, source.uns["hashes"]["cae_encoder"])  # checked by SourceRun.open
    cell_feats = features_from_config(cfg, manifest, seg, settings.features,
                                      encoder_weights=encoder)
    timings = {"segment": t1 - t0, "cell_features": time.perf_counter() - t1}
    return embed_segmentation(cfg, manifest, seg, cell_feats, settings, timings,
                              applied_from=source.provenance())
