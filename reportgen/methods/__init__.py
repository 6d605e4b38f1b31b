"""Visualization methods. Importing this package registers every method in the one registry."""

from reportgen.methods import cam, feature_maps, kernels  # noqa: F401  (registers the methods)
from reportgen.methods.registry import MethodSpec, cam_method_names, get_method, list_methods

__all__ = ["MethodSpec", "cam_method_names", "get_method", "list_methods"]
