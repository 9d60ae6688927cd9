"""The ``dorl`` command line: one subcommand per stage, each driven by the merged config.

Every command takes ``-c/--config FILE`` (deltas over the package defaults) and any number of
``key=value`` overrides, e.g. ``dorl embed -c configs/default.yaml cae.epochs=2 seed=1``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from dorl import __version__

logger = logging.getLogger("dorl.cli")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", action="append",
                        help="YAML file with deltas over the package defaults; repeat to layer "
                             "several (later files win)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, applied last (e.g. seed=1 cae.epochs=2)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser (kept separate so docs can render it)."""
    parser = argparse.ArgumentParser(
        prog="dorl", description=(
            "Domain-invariant white-blood-cell embeddings. Stage 1 (embed): LoRA-SAM segments "
            "each cell, a cross-domain autoencoder trains the cell encoder on every lab's cells, "
            "and the embeddings go to an .h5ad file. Stage 2 (classify, umap): classical "
            "classifiers and UMAP on the stored embeddings."))
    parser.add_argument("--version", action="version", version=f"dorl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="make or index a dataset")
    data_sub = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    _common(data_sub.add_parser(
        "prepare", help="synth when data.sources is empty, else manifest (what `make data` runs)"))
    _common(data_sub.add_parser(
        "synth", help="generate the synthetic multi-domain cell dataset into data.root (whole "
                      "fields when data.synth.fields_per_domain > 0)"))
    _common(data_sub.add_parser(
        "manifest", help="build data.manifest from data.sources (dataset layouts, dedup, checks)"))

    sam = sub.add_parser("sam", help="LoRA-SAM stage on its own")
    sam_sub = sam.add_subparsers(dest="action", required=True, metavar="ACTION")
    _common(sam_sub.add_parser("finetune", help="LoRA fine-tune SAM on cell masks (no labels)"))
    ev = sam_sub.add_parser("eval", help="Dice/IoU per domain against ground-truth masks, "
                                         "zero-shot vs fine-tuned, with overlay PNGs")
    _common(ev)

    _common(sub.add_parser("embed", help="stage 1: data -> LoRA-SAM -> segmentation -> "
                                         "encoder trained on every lab -> features.h5ad in "
                                         "run_dir"))

    apply = sub.add_parser("apply", help="embed a new lab's cells with a finished run's LoRA "
                                         "adapter and adapted encoder, training nothing")
    apply.add_argument("--from", dest="from_run", required=True, metavar="RUN_DIR",
                       help="the finished `dorl embed` run; -c and overrides give only data.*, "
                            "run_dir, device and num_threads")
    _common(apply)

    cls = sub.add_parser("classify", help="stage 2: compare classifiers on stored embeddings")
    cls_sub = cls.add_subparsers(dest="action", required=True, metavar="ACTION")
    _common(cls_sub.add_parser("run", help="fit and score every classifier and protocol"))
    pred = cls_sub.add_parser("predict", help="apply a saved model to a new feature file")
    pred.add_argument("--model", required=True,
                      help="a .skops model saved by `classify run` (loads without running code)")
    pred.add_argument("--features", required=True, help="the .h5ad feature file to label")
    pred.add_argument("--out", required=True, help="CSV of predictions to write")
    _common(pred)

    _common(sub.add_parser("umap", help="UMAP of embeddings by domain and by class (PNG + HTML)"))
    info = sub.add_parser("info",
                          help="versions, device, checkpoints; --outputs lists a run's results")
    info.add_argument("--outputs", action="store_true", help="list the result files of run_dir")
    _common(info)
    return parser


#: The commands that write a run folder's products: one process at a time per folder.
WRITING_STAGES = ("embed", "apply", "classify.run", "umap")
#: The commands that only read: they log to the console and write nothing in the run folder
#: (``classify predict`` writes only its ``--out`` file).
READ_ONLY_STAGES = ("info", "classify.predict")


def _prepare(args: argparse.Namespace, stage: str, held: ExitStack):
    """Load config, hold run_dir for a writing stage (for as long as ``held``), seed, set up
    logging (into run_dir unless the stage only reads) and write provenance for this command."""
    from dorl.config import load_config, save_resolved
    from dorl.device import configure_threads
    from dorl.distributed import current
    from dorl.provenance import (package_versions, setup_console_logging, setup_run_logging,
                                 utc_now)
    from dorl.run_lock import hold_run_dir
    from dorl.seeding import seed_everything

    cfg = load_config(args.config, args.overrides)
    seed_everything(cfg.seed)
    configure_threads(cfg.num_threads)
    if stage in READ_ONLY_STAGES:
        setup_console_logging(args.verbose)
        return cfg
    run_dir = Path(cfg.run_dir)
    rank = current().rank
    if stage in WRITING_STAGES and rank == 0:  # the other ranks work under rank 0's hold
        held.enter_context(hold_run_dir(run_dir))
    setup_run_logging(run_dir, args.verbose, rank)
    if rank > 0:  # one copy of the run's config and versions, written by rank 0
        return cfg
    save_resolved(cfg, run_dir, f"config.{stage}.yaml")
    (run_dir / f"versions.{stage}.json").write_text(json.dumps(
        {"created_utc": utc_now(), "command": sys.argv, "versions": package_versions()},
        indent=2))
    return cfg


def _data_synth(args: argparse.Namespace, cfg) -> None:
    synth = cfg.data.synth
    if int(synth.fields_per_domain) > 0:
        from omegaconf import OmegaConf

        from dorl.data.synth.fields import compose_fields

        compose_fields(cfg.data.root, list(synth.domains), int(synth.fields_per_domain),
                       int(synth.fields_grid), int(synth.image_size),
                       OmegaConf.to_container(synth.class_weights, resolve=True), int(cfg.seed))
        return
    from dorl.data.synth.generate import generate_from_config

    manifest = generate_from_config(cfg)
    logger.info("synthetic dataset: %d cells in %s", len(manifest), cfg.data.root)


def _data_manifest(args: argparse.Namespace, cfg) -> None:
    from omegaconf import OmegaConf

    from dorl.data.readers import build_manifest

    sources = OmegaConf.to_container(cfg.data.sources, resolve=True)
    manifest, report = build_manifest(sources, cfg.data.label_space, cfg.data.manifest)
    logger.info("manifest %s: %d cells, data signature %s, %d duplicates dropped, "
                "%d conflicting copies dropped", cfg.data.manifest, len(manifest),
                manifest.signature(), len(report.dropped), len(report.conflicting))


def _data_prepare(args: argparse.Namespace, cfg) -> None:
    (_data_manifest if cfg.data.sources else _data_synth)(args, cfg)


def _sam_finetune(args: argparse.Namespace, cfg) -> None:
    from dorl.data.readers import manifest_from_config
    from dorl.sam.finetune import finetune_from_config

    finetune_from_config(cfg, manifest_from_config(cfg))


def _sam_eval(args: argparse.Namespace, cfg) -> None:
    from dorl.data.readers import manifest_from_config
    from dorl.sam.evaluate import evaluate_from_config

    evaluate_from_config(cfg, manifest_from_config(cfg))


def _embed(args: argparse.Namespace, cfg) -> None:
    from dorl.distributed import shutdown
    from dorl.pipeline.embed import run_embed

    try:
        path = run_embed(cfg)
    finally:
        shutdown()
    logger.info("features: %s", path)


def _apply(args: argparse.Namespace, cfg) -> None:
    from dorl.pipeline.apply import apply_run

    logger.info("features of the new cells: %s", apply_run(args.from_run, cfg))


def _classify_run(args: argparse.Namespace, cfg) -> None:
    from dorl.classify.run import classify_from_config

    logger.info("classification results: %s", classify_from_config(cfg))


def _classify_predict(args: argparse.Namespace, cfg) -> None:
    from dorl.classify.predict import predict_file

    predict_file(args.model, args.features, args.out)


def _umap(args: argparse.Namespace, cfg) -> None:
    from dorl.viz.umap import umap_from_config

    logger.info("UMAP plots: %s", umap_from_config(cfg))


def _info(args: argparse.Namespace, cfg) -> None:
    from dorl.info import describe

    logger.info("\n%s", describe(cfg, outputs=args.outputs))


#: ``command`` or ``command.action`` -> what it runs, given the parsed arguments and the config.
COMMANDS = {
    "data.prepare": _data_prepare, "data.synth": _data_synth, "data.manifest": _data_manifest,
    "sam.finetune": _sam_finetune, "sam.eval": _sam_eval, "embed": _embed, "apply": _apply,
    "classify.run": _classify_run, "classify.predict": _classify_predict, "umap": _umap,
    "info": _info,
}


def _run(args: argparse.Namespace) -> int:
    action = getattr(args, "action", None)
    stage = f"{args.command}.{action}" if action else args.command
    with ExitStack() as held:
        cfg = _prepare(args, stage, held)
        start = time.perf_counter()
        COMMANDS[stage](args, cfg)
        logger.info("%s finished in %.1f s", stage, time.perf_counter() - start)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dorl`` console script and ``python -m dorl``.

    Returns 0 on success; 2 for bad input (an :class:`~dorl.errors.InputError`, a missing file,
    a full disk), reported in one line; 130 after Ctrl-C, also in one line (a rerun resumes).
    """
    from dorl.errors import InputError

    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        logger.error("interrupted; what was finished is saved, and the same command resumes")
        return 130
    except Exception as exc:
        from dorl.write_failures import describe, write_failure

        if isinstance(exc, (InputError, FileNotFoundError)):
            logger.error("%s", exc)
        elif write_failure(exc) is not None:  # a full disk, a quota, a read-only folder
            logger.error("%s", describe(exc))
        else:
            raise
        return 2
    finally:
        from dorl.provenance import close_run_logging

        close_run_logging()
