"""KMNIST, cursive Japanese: 28×28 grey images in 10 classes, in the IDX format (`idx`)."""

from torchvision import datasets

from tunekit.datasets import idx
from tunekit.datasets.registry import Augment, Dataset, register

register(
    Dataset(
        "kmnist",
        idx.reader("kmnist", datasets.KMNIST),
        shape=(1, 28, 28),
        classes=10,
        mean=(0.1918,),  # of the training pixels, in [0, 1]
        std=(0.3483,),
        augment=Augment(rotation=7.0),  # ± 7°, as for every 28×28 digit set here
    )
)
