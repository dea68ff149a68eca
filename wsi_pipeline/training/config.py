"""The training recipe's settings, ``TrainConfig`` and ``AugmentConfig``: importable without torch, so that
``wsi-train`` builds its options from them quickly."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths; 0 (or ``dihedral=False``) switches a transform off."""

    dihedral: bool = field(default=True, metadata={"help": "random flips and 90° rotations"})
    brightness: float = field(default=0.2, metadata={"help": "multiply by U(1 - b, 1 + b)"})
    contrast: float = field(default=0.2, metadata={"help": "scale about the mean grey by U(1 - c, 1 + c)"})
    saturation: float = field(default=0.2, metadata={"help": "scale away from grey by U(1 - s, 1 + s)"})
    hue: float = field(default=0.0, metadata={"help": "rotate the chroma by U(-h, h) turns"})
    hed_scale: float = field(default=0.05, metadata={"help": "scale each stain by U(1 - a, 1 + a)"})
    hed_shift: float = field(default=0.05, metadata={"help": "add U(-b, b) to each stain (optical density)"})

    def validate(self) -> None:
        for name in ("brightness", "contrast", "saturation", "hed_scale", "hed_shift"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"augmentation {name} must be in [0, 1), not {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"augmentation hue must be in [0, 0.5], not {self.hue}")


@dataclass
class TrainConfig:
    """The training recipe: everything that decides the weights, given the data and the seed."""

    architecture: str = "efficientnet_b0"  # a timm model name, or "compact_cnn"
    architecture_args: dict = field(default_factory=dict)  # e.g. {"depth": 4, "width": 16} for compact_cnn
    pretrained: bool = True  # start from ImageNet weights when timm can fetch them
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3  # peak learning rate of the one-cycle schedule
    weight_decay: float = 1e-2
    patience: int = 3  # stop after this many epochs without a better validation AUC (ties: lower loss)
    accumulate: int = 1  # batches per optimiser step
    seed: int = 0
    max_train_samples: int | None = None  # patches drawn per epoch (default: all)
    max_val_samples: int | None = None  # a fixed random subset of the validation data (default: all)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self) -> None:
        positive = (
            "epochs",
            "batch_size",
            "lr",
            "patience",
            "accumulate",
            "max_train_samples",
            "max_val_samples",
        )
        for name in positive:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, not {value}")
        if self.architecture != "compact_cnn":
            import timm  # loads torch: only once there is a recipe to check

            if not timm.is_model(self.architecture):
                raise ValueError(
                    f"architecture {self.architecture!r} is neither compact_cnn nor a timm model name"
                )
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be at least 0, not {self.weight_decay}")
        self.augment.validate()
