"""Image spaces: the pixel <-> token interfaces a unified model reads and writes."""
from zoo.spaces.affine import AffineSpace
from zoo.spaces.base import ImageSpace
from zoo.spaces.hf import HFVisionSpace
from zoo.spaces.timm import TimmSpace
from zoo.spaces.vq import VARIANTS, VQConfig, VQTokenizer

__all__ = ["VARIANTS", "AffineSpace", "HFVisionSpace", "ImageSpace", "TimmSpace", "VQConfig", "VQTokenizer"]
