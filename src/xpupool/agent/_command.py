"""Running vendor command-line tools (``npu-smi``, ``amd-smi``) behind an injectable runner.

A :data:`Runner` takes argv and returns a :class:`CommandResult`; it never raises for a missing
tool, a timeout or a non-zero exit (those are ordinary outcomes on a node without the vendor's
software). Tests pass a runner that replays recorded outputs.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


Runner = Callable[[Sequence[str]], CommandResult]


def subprocess_runner(timeout_s: float = 10.0) -> Runner:
    """A runner over :func:`subprocess.run`; missing tool -> returncode 127, timeout -> 124."""

    def run(argv: Sequence[str]) -> CommandResult:
        try:
            done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, check=False)
        except FileNotFoundError:
            return CommandResult(127, "", f"{argv[0]}: not found")
        except subprocess.TimeoutExpired:
            return CommandResult(124, "", f"{argv[0]}: timed out after {timeout_s:g} s")
        except OSError as exc:
            return CommandResult(126, "", f"{argv[0]}: {exc}")
        return CommandResult(done.returncode, done.stdout, done.stderr)

    return run
