"""Architectures by name (timm-style registry). Importing this package registers them all."""

from .registry import ArchInfo, arch_info, create_arch, list_archs, register_arch, register_pattern

__all__ = ["ArchInfo", "arch_info", "create_arch", "list_archs", "register_arch", "register_pattern"]
