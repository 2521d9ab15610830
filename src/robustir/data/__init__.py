"""Data: image/tensor files, the data root, named datasets, map-style datasets and training patches."""

from robustir.data.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from robustir.data.datasets import (Degradation, DegradedImages, ImageFolder, PairedFolder, convert_channels,
                                    item_generator, resize_square)
from robustir.data.io import image_size, load_image, load_tensors, save_image, save_tensors, tensors_metadata
from robustir.data.names import DatasetInfo, dataset_info, list_datasets, list_images, resolve_dataset
from robustir.data.patches import RandomPatches, dihedral
from robustir.data.root import data_root

__all__ = ["DatasetInfo", "Degradation", "DegradedImages", "ImageFolder", "PairedFolder", "RandomPatches",
           "atomic_path", "atomic_write_bytes", "atomic_write_text", "convert_channels", "data_root", "dataset_info",
           "dihedral", "image_size", "item_generator", "list_datasets", "list_images", "load_image", "load_tensors",
           "resize_square", "resolve_dataset", "save_image", "save_tensors", "tensors_metadata"]
