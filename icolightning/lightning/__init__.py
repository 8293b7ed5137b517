"""Lightning tasks: climate segmentation and whole-signal classification."""

from icolightning.lightning.base import IcoTask
from icolightning.lightning.checkpoints import load_module
from icolightning.lightning.classification import ClassificationModule
from icolightning.lightning.segmentation import SegmentationModule

__all__ = ["ClassificationModule", "IcoTask", "SegmentationModule", "load_module"]
