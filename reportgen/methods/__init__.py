"""Visualization methods: the registry (torch-free) and, in submodules, their implementations."""

from reportgen.methods.registry import MethodSpec, cam_method_names, get_method, list_methods

__all__ = ["MethodSpec", "cam_method_names", "get_method", "list_methods"]
