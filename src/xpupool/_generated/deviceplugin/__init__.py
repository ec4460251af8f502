"""Kubelet device plugin API stubs (generated)."""
