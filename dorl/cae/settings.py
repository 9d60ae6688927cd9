"""The autoencoder's settings, unpacked once from the ``cae`` config section by
:meth:`CAESettings.from_config`; the model builder, the losses and the training loop take these
frozen values, never the config."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import OmegaConf

INPUTS = ("crop", "features", "both")
ARCHS = ("conv", "transformer")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (``cae.loss``) and the alignment ramp's length in epochs."""

    ssim: float
    l1: float
    mse: float
    feature: float
    mmd: float
    coral: float
    align_warmup_epochs: float
    consistency: float = 0.0

    @property
    def aligns(self) -> bool:
        """Whether any alignment term is on."""
        return self.mmd > 0 or self.coral > 0


@dataclass(frozen=True)
class TransformerShape:
    """The transformer autoencoder's width, depth, heads and token mask ratio."""

    dim: int
    depth: int
    heads: int
    mask_ratio: float


@dataclass(frozen=True)
class CAESettings:
    """Everything the autoencoder stage reads from ``cae``; see dorl/defaults.yaml."""

    arch: str
    input: str
    latent_dim: int
    width: int
    domain_code_dim: int
    transformer: TransformerShape
    epochs: int
    batch_per_domain: int
    lr: float
    lr_warmup_epochs: float
    weight_decay: float
    patience: int
    loss: LossWeights
    mmd_bandwidths: tuple[float, ...]
    view_augment: dict = field(default_factory=dict)

    @property
    def uses_crop(self) -> bool:
        return self.input in ("crop", "both")

    @property
    def uses_features(self) -> bool:
        return self.input in ("features", "both")

    @classmethod
    def from_config(cls, cae) -> "CAESettings":
        """Unpack the ``cae`` config section.

        Raises
        ------
        ValueError
            For an unknown ``cae.input`` or ``cae.arch``.
        """
        if cae.input not in INPUTS:
            raise ValueError(f"cae.input must be crop, features or both, got {cae.input!r}")
        if cae.arch not in ARCHS:
            raise ValueError(f"cae.arch must be conv or transformer, got {cae.arch!r}")
        loss, t = cae.loss, cae.transformer
        return cls(
            arch=str(cae.arch), input=str(cae.input), latent_dim=int(cae.latent_dim),
            width=int(cae.width), domain_code_dim=int(cae.domain_code_dim),
            transformer=TransformerShape(int(t.dim), int(t.depth), int(t.heads),
                                         float(t.mask_ratio)),
            epochs=int(cae.epochs), batch_per_domain=int(cae.batch_per_domain), lr=float(cae.lr),
            lr_warmup_epochs=float(cae.lr_warmup_epochs),
            weight_decay=float(cae.weight_decay), patience=int(cae.patience),
            loss=LossWeights(float(loss.ssim), float(loss.l1), float(loss.mse),
                             float(loss.feature), float(loss.mmd), float(loss.coral),
                             float(loss.align_warmup_epochs), float(loss.consistency)),
            mmd_bandwidths=tuple(float(b) for b in cae.mmd_bandwidths),
            view_augment=OmegaConf.to_container(cae.view_augment, resolve=True))
