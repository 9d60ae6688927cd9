"""The artifacts ``dorl embed`` reuses between runs, the config keys each depends on, and the one
rule for reusing them.

An artifact is reused when its signature matches: a hash of the config keys it declares, of the
data, and of the artifacts it is made from (its upstream). Declaring the keys in one table keeps
the artifacts consistent: a key that only changes evaluation (``sam.eval``, ``classify``,
``umap``) leaves every artifact valid, and a key an artifact depends on always rebuilds it.

=============  ==================================================  ============================
artifact       declared keys                                       upstream
=============  ==================================================  ============================
adapter        seed, the SAM model, ``sam.lora``, ``sam.finetune``  data
segmentation   the SAM model, ``sam.lora``, ``sam.infer``           data, adapter files
CAE            seed, ``data.label_space``, ``features``, ``cae``    data, segmentation
cell features  seed, ``features``                                   segmentation, CAE encoder
feature file   every key above, ``qc`` (``cae`` only when it is on)  data
=============  ==================================================  ============================
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dorl.errors import InputError
from dorl.provenance import signature_of

logger = logging.getLogger(__name__)

#: The keys that define the SAM network and how it is prompted.
SAM_MODEL = ("sam.backbone", "sam.checkpoint", "sam.image_size", "sam.prompt", "sam.box_fraction",
             "sam.lora", "sam.train_prompt_encoder")


@dataclass(frozen=True)
class Artifact:
    """One reusable artifact: its name (for messages) and the config keys it depends on."""

    name: str
    keys: tuple[str, ...]

    def parts(self, cfg) -> dict[str, str]:
        """The declared keys' values grouped by top-level section, each group hashed: e.g.
        ``{"seed": "0", "sam": "<hash>", "cae": "<hash>"}``; the groups name what differs."""
        groups: dict[str, list] = {}
        for key in self.keys:
            value = OmegaConf.select(cfg, key, throw_on_missing=True)
            if OmegaConf.is_config(value):
                value = OmegaConf.to_container(value, resolve=True)
            groups.setdefault(key.split(".")[0], []).append((key, value))
        return {section: str(items[0][1]) if len(items) == 1 and items[0][0] == section
                else signature_of(items) for section, items in groups.items()}

    def signature(self, cfg, *upstream: Any) -> str:
        """One hash of the declared keys and the upstream items (data, other signatures)."""
        return signature_of([self.parts(cfg), *upstream])


ADAPTER = Artifact("LoRA adapter", ("seed", *SAM_MODEL, "sam.finetune"))
SEGMENTATION = Artifact("segmentation", (*SAM_MODEL, "sam.infer"))
CELL_FEATURES = Artifact("cell features", ("seed", "features"))
CAE_CHECKPOINT = Artifact("CAE checkpoint", ("seed", "data.label_space", "features", "cae"))
FEATURE_FILE = Artifact("feature file", ("seed", "data.label_space", *SAM_MODEL, "sam.finetune",
                                         "sam.infer", "features", "qc", "cae"))


class ArtifactMismatchError(InputError, ValueError):
    """A refused artifact: it was made by another config or dataset."""


def reusable(artifact: Artifact, path: str | Path, found: Any, expected: Any, *,
             refuse: bool = False, error: type[Exception] = ArtifactMismatchError) -> bool:
    """Whether the artifact at ``path``, whose stored signature is ``found``, can be reused.

    Parameters
    ----------
    artifact : Artifact
    path : path
        Where the artifact is (only named in messages).
    found : str, dict or None
        The signature stored with it; None when there is none (nothing to reuse).
    expected : str or dict
        The signature this run would give it.
    refuse : bool, default=False
        What to do with a different signature: False logs that it is rebuilt and returns False;
        True raises ``error``, naming the differing groups, so that nothing is overwritten.
    error : exception class, default=ArtifactMismatchError

    Returns
    -------
    bool
        True when ``found == expected``.
    """
    if found is None:
        return False
    if found == expected:
        logger.info("%s %s matches this config and data: reused", artifact.name, path)
        return True
    if refuse:
        if isinstance(found, dict) and isinstance(expected, dict):
            details = "; ".join(f"{k}: it has {found.get(k)!r}, this run has {v!r}"
                                for k, v in expected.items() if found.get(k) != v)
        else:
            details = f"signature {found!r}, this run {expected!r}"
        raise error(f"{path} was made by another config or dataset ({details}). Delete it or "
                    f"choose another run_dir.")
    logger.info("%s %s was made with other settings: made again", artifact.name, path)
    return False
