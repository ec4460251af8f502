"""Kubelet PodResources API stubs (generated)."""
