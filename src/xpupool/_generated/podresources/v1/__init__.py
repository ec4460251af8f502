"""Kubelet ``podresources/v1`` stubs generated from ``api.proto`` in this folder."""
