"""Placement policies, registered by name in :data:`xpupool.core.framework.REGISTRY`.

Importing this package registers every plugin. :mod:`xpupool.plugins.profiles` turns a policy
name (``fgd``, ``xpupool``, ``bestfit``, ...) into a :class:`~xpupool.core.framework.Profile`.
"""

from xpupool.plugins import baselines, fgd, filters, holdback, loadaware, xpupool_policy  # noqa: F401  (registration)
