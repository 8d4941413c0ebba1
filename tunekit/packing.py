"""What may share a pack: the trials whose settings differ only in what a pack keeps per member."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunekit.spec import TrialConfig

PER_MEMBER = ("seed", "optimizer", "l1", "l2", "penalize")  # train settings a pack's trials
#                                                              may each have their own


def pack_key(config: "TrialConfig") -> str:
    """What the trials of one pack must share: everything but the train settings in PER_MEMBER
    (and the device, which the pack decides)."""
    train = config.train.model_dump(mode="json", exclude={*PER_MEMBER, "device"})
    return repr(
        (
            config.data.model_dump(mode="json"),
            config.model.model_dump(mode="json"),
            sorted(train.items()),
        )
    )


AUTO_PACK = 16  # sweep.pack auto where trials get a GPU and the driver has none to measure the
#                pack size on (measure.gpu_pack); on CPUs, 1
