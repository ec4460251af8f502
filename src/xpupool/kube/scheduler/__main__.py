"""``python -m xpupool.kube.scheduler``."""

from xpupool.kube.scheduler.cli import main

main()
