"""The CLI's console: the terminal's width on a terminal, ``$COLUMNS`` when set, else 140 columns
when piped (so a redirected table is not squeezed to the 80-column fallback)."""

from __future__ import annotations

import os
import sys

from rich.console import Console

PIPED_WIDTH = 140


def console_width() -> int | None:
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return None if sys.stdout.isatty() else PIPED_WIDTH


def make_console() -> Console:
    return Console(width=console_width())
