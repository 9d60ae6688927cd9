"""The autoencoder's settings, unpacked once from the config by :meth:`CAESettings.from_config`;
the model, the losses and the training loop take these frozen values, never the config."""

from __future__ import annotations

from dataclasses import dataclass

from dorl.cae.views import ViewAugment
from dorl.config import ConfigError
from dorl.data.taxonomy import UNKNOWN, label_space
from dorl.features.resolution import parse_resolution

PROTOCOLS = ("transductive", "inductive")
SUPERVISION = ("none", "source_labels")
TRAINABLE_ENCODERS = ("efficientnet_lite0",)


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (``cae.loss``); 0 switches a term off."""

    contrastive: float
    reconstruction: float
    mmd: float
    supervised: float
    cross_lab_neighbour: float = 0.0

    def __post_init__(self):
        weights = (self.contrastive, self.reconstruction, self.mmd, self.supervised,
                   self.cross_lab_neighbour)
        if min(weights) < 0:
            raise ConfigError(f"cae.loss weights must be >= 0, got {self}")
        if not any(weights):
            raise ConfigError("cae.loss: every weight is 0, nothing to train (set "
                              "cae.enabled=false for the frozen encoder)")


@dataclass(frozen=True)
class PseudoLabels:
    """Self-training on class-balanced pseudo-labels (``cae.pseudo_labels``); weight 0: off."""

    weight: float
    after_epochs: int
    fraction: float

    def __post_init__(self):
        if self.weight < 0:
            raise ConfigError(f"cae.pseudo_labels.weight must be >= 0, got {self.weight}")
        if self.after_epochs < 0:
            raise ConfigError(f"cae.pseudo_labels.after_epochs must be >= 0, got "
                              f"{self.after_epochs}")
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"cae.pseudo_labels.fraction must be within (0, 1], got "
                              f"{self.fraction}")


@dataclass(frozen=True)
class CAESettings:
    """Everything the autoencoder stage reads; see ``cae`` in dorl/defaults.yaml."""

    encoder: str
    crop_size: int
    protocol: str
    target_domains: tuple[str, ...]
    supervision: str
    label_domains: tuple[str, ...]
    epochs: int
    batch_per_domain: int
    lr: float
    head_lr: float
    lr_warmup_epochs: float
    weight_decay: float
    projection_dim: int
    temperature: float
    loss: LossWeights
    neighbours_after_epochs: int
    class_balanced_mmd: bool
    mmd_bandwidths: tuple[float, ...]
    augment: ViewAugment
    pseudo_labels: PseudoLabels
    #: The classes a source-label head predicts (``data.label_space`` but ``unknown``).
    classes: tuple[str, ...]
    #: ``features.resolution``: the crops train as they are embedded.
    resolution: str | int
    #: ``cae.backward_per_lab``: one lab's activations in memory at a time.
    backward_per_lab: bool

    @classmethod
    def from_config(cls, cfg) -> "CAESettings":
        """Unpack and check ``cfg.cae`` (and the encoder, crop side and resolution of
        ``cfg.features``, and the classes of ``data.label_space``).

        Raises
        ------
        ConfigError
            Naming the key, for any value the stage cannot run with.
        """
        cae, features = cfg.cae, cfg.features
        encoders = [str(e) for e in features.encoders]
        if len(encoders) != 1 or encoders[0] not in TRAINABLE_ENCODERS:
            raise ConfigError(f"cae.enabled=true trains one EfficientNet-Lite: features.encoders "
                              f"must be {list(TRAINABLE_ENCODERS)}, got {encoders}")
        if cae.protocol not in PROTOCOLS:
            raise ConfigError(f"cae.protocol must be one of {list(PROTOCOLS)}, got "
                              f"{cae.protocol!r}")
        if cae.supervision not in SUPERVISION:
            raise ConfigError(f"cae.supervision must be one of {list(SUPERVISION)}, got "
                              f"{cae.supervision!r}")
        loss = LossWeights(float(cae.loss.contrastive), float(cae.loss.reconstruction),
                           float(cae.loss.mmd), float(cae.loss.supervised),
                           float(cae.loss.cross_lab_neighbour))
        label_domains = tuple(str(d) for d in cae.label_domains)
        if cae.supervision == "source_labels":
            if not label_domains:
                raise ConfigError("cae.supervision=source_labels needs cae.label_domains: the "
                                  "domains whose labels the encoder may learn from")
            if loss.supervised <= 0:
                raise ConfigError("cae.supervision=source_labels needs cae.loss.supervised > 0")
        elif loss.supervised > 0:
            raise ConfigError("cae.loss.supervised > 0 needs cae.supervision=source_labels")
        p = cae.pseudo_labels
        pseudo = PseudoLabels(float(p.weight), int(p.after_epochs), float(p.fraction))
        if pseudo.weight > 0 and cae.supervision != "source_labels":
            raise ConfigError("cae.pseudo_labels.weight > 0 needs cae.supervision=source_labels: "
                              "the pseudo-labels come from the labelled cells of label_domains")
        crop_size = int(features.crop_size)
        if crop_size % 32:
            raise ConfigError(f"features.crop_size must be a multiple of 32 when the encoder "
                              f"trains (its feature map is 1/32 of the crop), got {crop_size}")
        for key in ("epochs", "batch_per_domain", "projection_dim"):
            if int(cae[key]) < 1:
                raise ConfigError(f"cae.{key} must be >= 1, got {cae[key]}")
        if int(cae.neighbours_after_epochs) < 0:
            raise ConfigError(f"cae.neighbours_after_epochs must be >= 0, got "
                              f"{cae.neighbours_after_epochs}")
        if float(cae.temperature) <= 0:
            raise ConfigError(f"cae.temperature must be > 0, got {cae.temperature}")
        a = cae.augment
        if not 0.0 <= float(a.cross_lab_stain) <= 1.0:
            raise ConfigError(f"cae.augment.cross_lab_stain must be within [0, 1], got "
                              f"{a.cross_lab_stain}")
        return cls(
            encoder=encoders[0], crop_size=crop_size, protocol=str(cae.protocol),
            target_domains=tuple(str(d) for d in cae.target_domains),
            supervision=str(cae.supervision), label_domains=label_domains,
            epochs=int(cae.epochs), batch_per_domain=int(cae.batch_per_domain),
            lr=float(cae.lr), head_lr=float(cae.head_lr),
            lr_warmup_epochs=float(cae.lr_warmup_epochs), weight_decay=float(cae.weight_decay),
            projection_dim=int(cae.projection_dim), temperature=float(cae.temperature),
            loss=loss, neighbours_after_epochs=int(cae.neighbours_after_epochs),
            class_balanced_mmd=bool(cae.class_balanced_mmd),
            mmd_bandwidths=tuple(float(b) for b in cae.mmd_bandwidths),
            augment=ViewAugment(float(a.stain_scale), float(a.stain_bias), float(a.brightness),
                                float(a.contrast), float(a.saturation), float(a.blur_prob),
                                (float(a.scale[0]), float(a.scale[1])),
                                float(a.cross_lab_stain)),
            pseudo_labels=pseudo,
            classes=tuple(c for c in label_space(cfg.data.label_space) if c != UNKNOWN),
            resolution=parse_resolution(features.resolution),
            backward_per_lab=bool(cae.backward_per_lab))
