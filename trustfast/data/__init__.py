"""Datasets: built-in ones (no downloads: data shipped with installed packages, or generated) and
loaders for the users' own image data (ImageFolder, CIFAR-10, npz, any map-style Dataset)."""

from trustfast.data.adapt import ImageDataset, as_image_dataset, dataset_tensors
from trustfast.data.cifar import CIFAR10
from trustfast.data.digits import colored_digits, digits
from trustfast.data.faces import face_pairs, synthetic_faces
from trustfast.data.images import IMAGE_EXTENSIONS, ImageFolder, load_image
from trustfast.data.npz import NpzDataset
from trustfast.data.qa import QA, MissingQAFieldError, QAFormat, load_qa, with_refusals
from trustfast.data.skin import (
    DEFAULT_GROUP_FREQS,
    LESION_CLASSES,
    SKIN_TONES,
    SkinDataset,
    skin_folder,
    synthetic_skin,
)
from trustfast.data.spec import DATA_SPECS, dataset_info, load_image_data, split_dataset

__all__ = [
    "CIFAR10", "DATA_SPECS", "DEFAULT_GROUP_FREQS", "LESION_CLASSES", "SKIN_TONES",
    "SkinDataset", "skin_folder", "synthetic_skin", "IMAGE_EXTENSIONS", "ImageDataset",
    "ImageFolder", "NpzDataset",
    "MissingQAFieldError", "QA", "QAFormat", "load_qa", "with_refusals",
    "as_image_dataset", "colored_digits", "dataset_info", "dataset_tensors", "digits",
    "face_pairs", "load_image", "load_image_data", "split_dataset", "synthetic_faces",
]
