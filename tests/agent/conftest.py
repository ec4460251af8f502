from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from xpupool.agent.kubeapi import KubeApi

from .fake_apiserver import FakeApiServer

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (unix socket paths are limited to ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="xpdp", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def apiserver() -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def kube(apiserver: FakeApiServer) -> AsyncIterator[KubeApi]:
    api = KubeApi(apiserver.url, token=apiserver.token)
    yield api
    await api.close()
