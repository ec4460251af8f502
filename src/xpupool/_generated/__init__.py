"""Generated code only (protobuf stubs). Never edit by hand.

Regenerate with ``python -m xpupool.agent.protogen``; ``tests/agent/test_generated_drift.py``
regenerates into a temporary directory and fails on any difference.
"""
