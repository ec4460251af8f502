"""The main job: the demo on an emulated pool runs end to end and shows the pool doing its job."""

from __future__ import annotations

from rich.console import Console
from typer.testing import CliRunner

from xpupool.cli.main import app
from xpupool.demo import run_demo


def test_demo_places_slices_a_gang_a_remote_pod_and_saves_cards() -> None:
    console = Console(record=True, width=140)
    summary = run_demo(console, pods=60, seed=7)
    text = console.export_text()
    assert summary["placed"] >= 50
    assert summary["remote"] == 1 and "remote vXPU on" in text
    assert "gang llm-finetune" in text
    assert summary["preempted"] >= 1
    assert summary["whole_card_equivalent"] > summary["cards_in_use"]


def test_cli_default_command_runs_the_demo() -> None:
    result = CliRunner().invoke(app, [])
    assert result.exit_code == 0, result.output
    assert "whole-card scheduling would need" in result.output


def test_check_request_explains_bad_input() -> None:
    result = CliRunner().invoke(app, ["check-request", "-r", "xpupool.io/vxpu=1", "-r", "xpupool.io/vxpu-core=0"])
    assert result.exit_code == 1 and "compute share is 1..100" in result.output
