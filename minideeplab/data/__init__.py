"""Datasets and input pipeline (DESIGN.md section 7): synthetic shapes, VOC 2012, transforms."""
from .shapes import ShapesDataset  # noqa: F401
from .voc import VOCSegmentation, voc_palette  # noqa: F401
from .transforms import EvalTransform, Loader, TrainTransform  # noqa: F401
