from .apiserver import control_plane, raw_api, test_namespace

__all__ = ["control_plane", "raw_api", "test_namespace"]
