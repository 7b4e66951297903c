"""Datasets and input pipeline (DESIGN.md section 7): synthetic shapes, PASCAL VOC 2012, transforms."""
from .shapes import ShapesDataset  # noqa: F401
