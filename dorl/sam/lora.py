"""LoRA on a CellSAM image encoder (peft), plus saving and loading the fine-tuned parts.

Only the LoRA matrices in the encoder, the mask decoder and (optionally) the prompt encoder are
trained; everything else is frozen. An adapter folder holds:

* ``adapter_config.json`` and ``adapter_model.safetensors``: peft's LoRA config and weights;
* ``trainable_weights.safetensors``: the mask decoder (and prompt encoder) weights;
* ``dorl_adapter.json``: the backbone and input size the adapter belongs to.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from peft import (
    LoraConfig,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_peft_model_state_dict,
)
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file

from dorl.atomic import atomic_path, write_text_atomic
from dorl.sam.models import CellSAM

logger = logging.getLogger(__name__)

LORA_CONFIG_FILE = "adapter_config.json"
LORA_WEIGHTS_FILE = "adapter_model.safetensors"
TRAINABLE_FILE = "trainable_weights.safetensors"
META_FILE = "dorl_adapter.json"


def has_lora(model: CellSAM) -> bool:
    """Whether LoRA layers have been injected into the model's image encoder."""
    return any(isinstance(m, LoraLayer) for m in model.image_encoder.modules())


def _set_trainable(model: CellSAM, train_prompt_encoder: bool) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    for param in model.mask_decoder.parameters():
        param.requires_grad_(True)
    for param in model.prompt_encoder.parameters():
        param.requires_grad_(train_prompt_encoder)
    model.train_prompt_encoder = train_prompt_encoder


def add_lora(model: CellSAM, rank: int, alpha: float, dropout: float, target_modules: Sequence[str],
             train_prompt_encoder: bool = False) -> CellSAM:
    """Inject LoRA into the image encoder's attention projections and freeze the rest, in place.

    Parameters
    ----------
    model : CellSAM
    rank, alpha, dropout : int, float, float
        LoRA rank r, scaling alpha (the update is scaled by alpha / r) and dropout.
    target_modules : sequence of str
        Module-name suffixes to adapt, e.g. ``["qkv"]`` (the fused attention projection of both
        TinyViT and SAM's ViT).
    train_prompt_encoder : bool
        Also train the prompt encoder.

    Returns
    -------
    CellSAM
        The same model. Trainable: LoRA matrices, mask decoder (and prompt encoder). The encoder's
        BatchNorm is folded first, so train mode cannot change a frozen statistic. At
        initialisation the outputs equal the base model's (LoRA B matrices start at zero).
    """
    if has_lora(model):
        raise ValueError("the model already has LoRA layers; build a fresh model to add new ones")
    model.fold_batchnorm()
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha), lora_dropout=float(dropout),
                        target_modules=list(target_modules), bias="none")
    try:
        inject_adapter_in_model(config, model.image_encoder)
    except ValueError as exc:
        raise ValueError(f"LoRA target modules {list(target_modules)} not found in the "
                         f"{model.backbone} image encoder: {exc}") from exc
    _set_trainable(model, train_prompt_encoder)
    model.lora_config = config
    summary = trainable_summary(model)
    logger.info("LoRA r=%d on %s: %d LoRA + %d other trainable, %d frozen parameters", rank,
                list(target_modules), summary["lora"], summary["trainable"] - summary["lora"],
                summary["frozen"])
    return model


def trainable_summary(model: CellSAM) -> dict:
    """Count parameters.

    Returns
    -------
    dict
        ``trainable``, ``frozen`` and ``lora`` (the LoRA share of trainable) parameter counts, and
        ``by_module``: ``{part: {"trainable": n, "frozen": n}}`` for the image encoder, prompt
        encoder and mask decoder.
    """
    summary = {"trainable": 0, "frozen": 0, "lora": 0, "by_module": {}}
    for part in ("image_encoder", "prompt_encoder", "mask_decoder"):
        counts = {"trainable": 0, "frozen": 0}
        for name, param in getattr(model, part).named_parameters():
            key = "trainable" if param.requires_grad else "frozen"
            counts[key] += param.numel()
            summary[key] += param.numel()
            if "lora_" in name and param.requires_grad:
                summary["lora"] += param.numel()
        summary["by_module"][part] = counts
    return summary


def _trainable_state(model: CellSAM) -> dict:
    state = {f"mask_decoder.{k}": v for k, v in model.mask_decoder.state_dict().items()}
    if getattr(model, "train_prompt_encoder", False):
        state.update({f"prompt_encoder.{k}": v
                      for k, v in model.prompt_encoder.state_dict().items()})
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_adapter(model: CellSAM, directory: str | Path) -> Path:
    """Write the LoRA and trained decoder weights to ``directory``, each file atomically.

    Returns
    -------
    Path
        The directory.
    """
    if not has_lora(model):
        raise ValueError("save_adapter needs a model with LoRA layers (call add_lora first)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lora_state = {k: v.detach().contiguous().cpu()
                  for k, v in get_peft_model_state_dict(model.image_encoder).items()}
    with atomic_path(directory / LORA_WEIGHTS_FILE) as tmp:
        save_file(lora_state, str(tmp))
    with atomic_path(directory / TRAINABLE_FILE) as tmp:
        save_file(_trainable_state(model), str(tmp))
    config = model.lora_config.to_dict()
    config["target_modules"] = sorted(config["target_modules"])
    write_text_atomic(directory / LORA_CONFIG_FILE, json.dumps(config, indent=2, default=str))
    meta = {"backbone": model.backbone, "image_size": model.image_size,
            "train_prompt_encoder": bool(getattr(model, "train_prompt_encoder", False))}
    write_text_atomic(directory / META_FILE, json.dumps(meta, indent=2))
    logger.info("adapter saved to %s", directory)
    return directory


def load_adapter(model: CellSAM, directory: str | Path) -> CellSAM:
    """Load an adapter written by :func:`save_adapter` into a model of the same backbone and size.

    A model without LoRA gets LoRA layers from the saved config first. Returns the model, whose
    outputs then equal those of the model that was saved.

    Raises
    ------
    FileNotFoundError
        When a file of the adapter is missing.
    ValueError
        When the adapter was made for another backbone or input size, or its weights do not fit.
    """
    directory = Path(directory)
    for name in (LORA_CONFIG_FILE, LORA_WEIGHTS_FILE, TRAINABLE_FILE, META_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"adapter file {directory / name} is missing")
    meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
    if (meta["backbone"], meta["image_size"]) != (model.backbone, model.image_size):
        raise ValueError(f"adapter {directory} was trained for {meta['backbone']} at "
                         f"{meta['image_size']} px, but the model is {model.backbone} at "
                         f"{model.image_size} px")
    config = json.loads((directory / LORA_CONFIG_FILE).read_text(encoding="utf-8"))
    if not has_lora(model):
        add_lora(model, config["r"], config["lora_alpha"], config["lora_dropout"],
                 config["target_modules"], meta["train_prompt_encoder"])
    lora_state = load_file(directory / LORA_WEIGHTS_FILE)
    result = set_peft_model_state_dict(model.image_encoder, lora_state)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"adapter {directory / LORA_WEIGHTS_FILE} has weights the model lacks: "
                         f"{result.unexpected_keys[:5]}")
    trained = load_file(directory / TRAINABLE_FILE)
    for part in ("mask_decoder", "prompt_encoder"):
        prefix = f"{part}."
        state = {k[len(prefix):]: v for k, v in trained.items() if k.startswith(prefix)}
        if state:
            try:
                getattr(model, part).load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise ValueError(f"adapter {directory / TRAINABLE_FILE} does not fit the "
                                 f"{part}: {exc}") from exc
    logger.info("adapter loaded from %s", directory)
    return model
