"""Image data sets as uint8 arrays (CIFAR-10, MNIST, image folders), cached after the first decode."""

from .base import ArrayDataset, DataError, DataNotFoundError
from .cifar import CIFAR10_CLASSES, CIFAR10_FILE, CIFAR10_MD5, CIFAR10_URL, read_cifar10_python
from .datasets import DATASETS, NORMALIZATION, dataset_key, load_dataset, load_image_folder
from .imagefolder import read_image_folder
from .loader import BatchLoader
from .mnist import read_idx, read_mnist
from .paths import cache_dir, data_dirs

__all__ = [
    "ArrayDataset", "BatchLoader", "CIFAR10_CLASSES", "CIFAR10_FILE", "CIFAR10_MD5", "CIFAR10_URL", "DATASETS",
    "DataError", "DataNotFoundError", "NORMALIZATION", "cache_dir", "data_dirs", "dataset_key", "load_dataset",
    "load_image_folder", "read_cifar10_python", "read_idx", "read_image_folder", "read_mnist",
]
