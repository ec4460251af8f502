"""The ``xpupool`` command (a thin typer app over the core, simulator and adapters)."""
