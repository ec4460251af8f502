from .apiserver import control_plane, e2e_namespace, raw_api

__all__ = ["control_plane", "e2e_namespace", "raw_api"]
