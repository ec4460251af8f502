"""Kubelet ``deviceplugin/v1beta1`` stubs generated from ``api.proto`` in this folder."""
