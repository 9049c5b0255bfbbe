"""A representative part of the runtime integration suite, run again with
every connection secured by mutual TLS: elections and leader stops,
forwarding, leadership transfer, growing and shrinking the membership,
learners, restarts, snapshot streaming, and clients.

The tests are the very ones of the modules they come from; the fixtures
below give them TLS clusters (``Cluster(tmp_path, tls=True)``) instead of
plain ones, and give their clients the cluster's client certificate. After
each test, every peer must have used TLS and refused no connection.
Refusals of peers and clients without valid credentials are in
``tests/test_security.py``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

import raftlib
import raftlib.kv
from raftlib.security import TLSConfig, make_certificates

from clusterkit import Cluster

from .test_clients import (  # noqa: F401  (collected here again, with the TLS fixtures)
    test_client_follows_a_leader_change_and_its_feed_has_no_gaps,
    test_client_retry_after_a_lost_connection_applies_once,
    test_client_writes_reads_and_moves_to_the_leader,
    test_a_retried_session_write_is_applied_once,
)
from .test_kv_cluster import test_the_client_api_through_a_follower  # noqa: F401
from .test_membership import (  # noqa: F401
    test_a_joined_member_restarts_from_its_data_dir,
    test_changes_sent_to_a_follower_are_forwarded,
    test_grow_from_one_to_five_while_writing,
    test_learners_receive_the_log_but_do_not_vote,
    test_replace_every_original_member_one_by_one,
    test_shrink_five_to_three_removing_the_leader,
)
from .test_peer import (  # noqa: F401
    test_leader_stop_elects_a_new_leader_and_keeps_committed_writes,
    test_readme_example_flow,
    test_stopping_the_leader_hands_over_leadership_first,
    test_transfer_leadership_to_the_most_up_to_date_follower,
)
from .test_snapshots import (  # noqa: F401
    SNAP,
    test_lagging_follower_catches_up_through_a_streamed_snapshot,
    test_restart_recovers_from_snapshot_plus_log_tail,
)


def _check_secured(cluster: Cluster) -> None:
    for peer in cluster.peers.values():
        assert isinstance(peer._transport.security, TLSConfig), peer.name
        assert peer._transport.stats["refused"] == 0, f"{peer.name} refused a connection"


async def _tls_cluster(tmp_path: Path, **kwargs: Any) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, tls=True, **kwargs)
    try:
        yield c
        _check_secured(c)
    finally:
        await c.close()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async for c in _tls_cluster(tmp_path):
        yield c


@pytest.fixture
async def lmdb_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async for c in _tls_cluster(tmp_path, storage="lmdb"):
        yield c


@pytest.fixture
async def snap_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async for c in _tls_cluster(tmp_path, storage="lmdb", config=SNAP):
        yield c


@pytest.fixture(autouse=True)
def clients_use_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reused tests connect clients without credentials: give them the
    client certificate of the cluster's test CA (the one in ``tmp_path / "certs"``)."""
    client_tls = make_certificates(tmp_path / "certs", ["client"])["client"]

    @functools.wraps(raftlib.connect)
    async def connect(addresses: Any, **kwargs: Any) -> raftlib.Client:
        kwargs.setdefault("tls", client_tls)
        return await original(addresses, **kwargs)

    original = raftlib.connect
    monkeypatch.setattr(raftlib, "connect", connect)
    monkeypatch.setattr(raftlib.kv, "connect", connect)

