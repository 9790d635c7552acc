"""wan-animate-pose: Wan2.2-Animate's preprocessing (``../shared/design/WAN_PREPROCESS.md``): the
person detector and ViTPose whole-body graphs imported from Wan's ``process_checkpoint`` folder,
face crops, pose drawing, retargeting and replacement masks, run by ``zoo pose``."""

from zoo.families.wan_animate_pose.family import FAMILY

__all__ = ["FAMILY"]
