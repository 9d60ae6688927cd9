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
        "synth", help="generate the synthetic multi-domain cell dataset into data.root"))
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


def _prepare(args: argparse.Namespace, stage: str, held: ExitStack):
    """Load config, hold run_dir for a writing stage (for as long as ``held``), seed, set up
    logging into run_dir and write provenance for this command."""
    from dorl.config import load_config, save_resolved
    from dorl.device import configure_threads
    from dorl.distributed import current
    from dorl.provenance import package_versions, setup_run_logging, utc_now
    from dorl.run_lock import hold_run_dir
    from dorl.seeding import seed_everything

    cfg = load_config(args.config, args.overrides)
    run_dir = Path(cfg.run_dir)
    rank = current().rank
    if stage in WRITING_STAGES and rank == 0:  # the other ranks work under rank 0's hold
        held.enter_context(hold_run_dir(run_dir))
    setup_run_logging(run_dir, args.verbose, rank)
    seed_everything(cfg.seed)
    configure_threads(cfg.num_threads)
    if rank > 0:  # one copy of the run's config and versions, written by rank 0
        return cfg
    save_resolved(cfg, run_dir, f"config.{stage}.yaml")
    (run_dir / f"versions.{stage}.json").write_text(json.dumps(
        {"created_utc": utc_now(), "command": sys.argv, "versions": package_versions()},
        indent=2))
    return cfg


def _run(args: argparse.Namespace) -> int:
    command = args.command
    action = getattr(args, "action", None)
    stage = f"{command}.{action}" if action else command
    with ExitStack() as held:
        return _run_stage(args, command, action, stage, _prepare(args, stage, held))


def _run_stage(args: argparse.Namespace, command: str, action: str | None, stage: str,
               cfg) -> int:
    start = time.perf_counter()
    if command == "data" and action == "prepare":
        action = "manifest" if cfg.data.sources else "synth"
    if command == "data" and action == "synth":
        from dorl.data.synth.generate import generate_from_config

        manifest = generate_from_config(cfg)
        logger.info("synthetic dataset: %d cells in %s", len(manifest), cfg.data.root)
    elif command == "data" and action == "manifest":
        from omegaconf import OmegaConf

        from dorl.data.readers import build_manifest

        sources = OmegaConf.to_container(cfg.data.sources, resolve=True)
        manifest, report = build_manifest(sources, cfg.data.label_space, cfg.data.manifest)
        logger.info("manifest %s: %d cells, data signature %s, %d duplicates dropped, "
                    "%d conflicting copies dropped", cfg.data.manifest, len(manifest),
                    manifest.signature(), len(report.dropped), len(report.conflicting))
    elif command == "sam" and action == "finetune":
        from dorl.data.readers import manifest_from_config
        from dorl.sam.finetune import finetune_from_config

        finetune_from_config(cfg, manifest_from_config(cfg))
    elif command == "sam" and action == "eval":
        from dorl.data.readers import manifest_from_config
        from dorl.sam.evaluate import evaluate_from_config

        evaluate_from_config(cfg, manifest_from_config(cfg))
    elif command == "embed":
        from dorl.pipeline.embed import run_embed
        from dorl.distributed import shutdown

        try:
            path = run_embed(cfg)
        finally:
            shutdown()
        logger.info("features: %s", path)
    elif command == "apply":
        from dorl.pipeline.apply import apply_run

        path = apply_run(args.from_run, cfg)
        logger.info("features of the new cells: %s", path)
    elif command == "classify" and action == "run":
        from dorl.classify.run import classify_from_config

        out = classify_from_config(cfg)
        logger.info("classification results: %s", out)
    elif command == "classify" and action == "predict":
        from dorl.classify.run import predict_file

        predict_file(args.model, args.features, args.out)
    elif command == "umap":
        from dorl.viz.umap import umap_from_config

        out = umap_from_config(cfg)
        logger.info("UMAP plots: %s", out)
    elif command == "info":
        from dorl.info import describe

        logger.info("\n%s", describe(cfg, outputs=args.outputs))
    logger.info("%s finished in %.1f s", stage, time.perf_counter() - start)
    return 0


# Errors that mean bad input (a config, a file, a dataset), not a bug: reported in one line, exit
# status 2. Looked up only in modules already imported (an error can only come from one of those),
# so a command never imports torch just to name an error class.
INPUT_ERRORS = {
    "dorl.config": "ConfigError", "dorl.data.manifest": "ManifestError",
    "dorl.data.taxonomy": "TaxonomyError", "dorl.data.images": "ImageReadError",
    "dorl.featstore": "FeatureFileError", "dorl.cae.train": "CheckpointError",
    "dorl.sam.checkpoints": "CheckpointMismatchError", "dorl.classify.registry": "ClassifierError",
    "dorl.classify.protocols": "ProtocolError", "dorl.classify.model_files": "ModelFileError",
    "dorl.run_lock": "RunLockedError", "dorl.data.synth.generate": "SynthError",
    "dorl.data.synth.domains": "DomainError", "dorl.write_failures": "StoreWriteError",
}


def input_errors() -> tuple[type[BaseException], ...]:
    """The :data:`INPUT_ERRORS` classes of the loaded modules, plus ``FileNotFoundError``."""
    return tuple(getattr(sys.modules[module], name) for module, name in INPUT_ERRORS.items()
                 if module in sys.modules) + (FileNotFoundError,)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dorl`` console script and ``python -m dorl``."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except Exception as exc:
        from dorl.write_failures import describe, write_failure

        if isinstance(exc, input_errors()):
            logger.error("%s", exc)
        elif write_failure(exc) is not None:  # a full disk, a quota, a read-only folder
            logger.error("%s", describe(exc))
        else:
            raise
        return 2
    finally:
        from dorl.provenance import close_run_logging

        close_run_logging()
