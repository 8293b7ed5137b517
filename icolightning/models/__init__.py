"""Models on vertex tensors: plain nn.Modules, usable without Lightning, any dtype and device."""

from icolightning.models.classifier import IcoClassifier
from icolightning.models.unet import IcoUNet

__all__ = ["IcoClassifier", "IcoUNet"]
