"""Architectures by name (timm-style registry). Importing this package registers them all."""

from .registry import ArchInfo, arch_info, create_arch, list_archs, register_arch, register_pattern

# Importing the modules registers their architectures.
from . import cifar_resnet, lenet, preact_resnet, resnet, wide_resnet  # noqa: E402,F401

__all__ = [
    "ArchInfo",
    "arch_info",
    "create_arch",
    "list_archs",
    "register_arch",
    "register_pattern",
]
from . import small  # noqa: E402,F401  (small CIFAR nets of the bundled zoo)
# RobustBench's other families (key-for-key as its model definitions).
from . import dm_preact_resnet, ensemble, imagenet_resnet, wide_resnet_variants  # noqa: E402,F401
