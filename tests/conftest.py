"""Fixtures shared by the runtime and end-to-end tests."""

from __future__ import annotations

from typing import Any, AsyncIterator

import pytest

from clusterkit import Cluster


@pytest.fixture
async def cluster(tmp_path: Any) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def lmdb_cluster(tmp_path: Any) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, storage="lmdb")
    try:
        yield c
    finally:
        await c.close()


