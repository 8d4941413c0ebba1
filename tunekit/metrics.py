"""What a trial reports after every epoch: one definition for training, sweeps and tracking."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float  # mean NLL per training image (penalty excluded)
    train_acc: float  # % of training images classified right, as augmented and with dropout
    val_loss: float  # mean NLL per test image
    val_acc: float  # % of the test set classified right
    lr: float  # learning rate at the start of the epoch
    seconds: float  # wall time of the training pass (evaluation excluded)
    images_per_s: float  # training images per second

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


METRICS = tuple(f.name for f in fields(EpochMetrics))  # what each epoch reports, epoch first
