"""Datasets and input pipeline (ARCHITECTURE.md section 8): synthetic shapes, VOC 2012, transforms."""
from .shapes import ShapesDataset  # noqa: F401
from .voc import VOCSegmentation, voc_palette  # noqa: F401
from .transforms import EvalTransform, Loader, TrainTransform  # noqa: F401
