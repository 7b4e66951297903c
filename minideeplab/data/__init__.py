"""Datasets and input pipeline (ARCHITECTURE.md s. 8): synthetic shapes, VOC 2012, transforms.
Imported where used, not by ``import minideeplab`` (it needs Pillow)."""
from .shapes import ShapesDataset  # noqa: F401
from .voc import VOCSegmentation, voc_palette  # noqa: F401
from .transforms import EvalTransform, Loader, TrainTransform  # noqa: F401
