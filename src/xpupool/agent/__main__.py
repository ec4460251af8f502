"""``python -m xpupool.agent``: run the node agent (settings from ``XPUPOOL_*`` environment)."""

from xpupool.agent.daemon import main

main()
