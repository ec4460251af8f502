"""Node agent: discovers the node's accelerators, publishes the inventory, serves the kubelet
device plugin and exports per-card metrics. Runs as one DaemonSet pod per accelerator node."""
