"""§7: log compaction and InstallSnapshot, driven message by message."""

from __future__ import annotations

from raftlib.core.messages import AppendEntries, AppendEntriesResponse, InstallSnapshot
from raftlib.core.progress import ProgressState
from raftlib.types import Entry, EntryKind, Membership, SnapshotMeta

from .network import Network, config


def fill(net: Network, leader: str, n: int, prefix: bytes = b"x") -> None:
    for k in range(n):
        net.propose(leader, prefix + str(k).encode())
        net.stabilize()


def let_c_fall_silent(net: Network) -> None:
    """Heartbeats for an election timeout, which cut-off c does not answer:
    from then on a no longer keeps the entries c needs next."""
    for _ in range(net.config.election_ticks // net.config.heartbeat_ticks + 1):
        net.tick("a", net.config.heartbeat_ticks)
        net.stabilize()


def lagging_c(entries: int = 10) -> tuple[Network, SnapshotMeta]:
    """a leads; c was cut off while a wrote ``entries`` entries and compacted
    them all into a snapshot (returned); the network is healed."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    net.isolate("c")
    fill(net, "a", entries)
    let_c_fall_silent(net)
    meta = net.take_snapshot("a")
    net.heal()
    return net, meta


def until_snapshot_in_flight(net: Network, leader: str = "a") -> None:
    """Heartbeat, then deliver everything but snapshots until the leader has sent one."""
    net.tick(leader, net.config.heartbeat_ticks)
    while not any(isinstance(m, InstallSnapshot) for m in net.inflight):
        assert net.inflight, "the leader never sent a snapshot"
        net.deliver(lambda m: not isinstance(m, InstallSnapshot))


def test_lagging_follower_gets_a_snapshot_then_entries() -> None:
    """§7: a follower behind the leader's compacted log receives the snapshot,
    discards its log and continues with the entries after it."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    net.isolate("c")
    fill(net, "a", 20)
    let_c_fall_silent(net)
    meta = net.take_snapshot("a")
    assert net.storage["a"].first_index() == meta.index + 1
    fill(net, "a", 3, b"after")
    net.heal()
    net.tick("a", net.config.heartbeat_ticks)
    # The heartbeat is rejected (c lacks the entry before it), the leader
    # probes, finds c's next entry compacted and sends the snapshot.
    while not any(isinstance(m, InstallSnapshot) for m in net.inflight):
        assert net.inflight
        net.deliver()
    assert net.nodes["a"].progress["c"].state is ProgressState.SNAPSHOT
    net.stabilize()
    snaps = [m for m in net.sent if isinstance(m, InstallSnapshot)]
    assert [(m.dst, m.index) for m in snaps] == [("c", meta.index)]
    c = net.nodes["c"]
    assert c.commit_index == net.nodes["a"].commit_index
    assert net.storage["c"].first_index() == meta.index + 1
    assert net.commands("c") == net.commands("a")
    assert net.nodes["a"].progress["c"].state is ProgressState.REPLICATE


def test_snapshot_discards_a_conflicting_log() -> None:
    """A follower whose log conflicts with the snapshot keeps none of it (a
    conflicting suffix after the snapshot index is a known bug elsewhere)."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    fill(net, "a", 2)
    net.isolate("a")
    # The old leader appends entries nobody else gets.
    for k in range(5):
        net.propose("a", b"lost" + str(k).encode())
    net.elect("b")
    fill(net, "b", 10, b"b")
    net.take_snapshot("b")
    net.heal()
    net.tick("b", net.config.heartbeat_ticks)
    net.stabilize()
    a = net.nodes["a"]
    assert a.role == "follower"
    assert net.commands("a") == net.commands("b")
    assert not any(d.startswith(b"lost") for d in net.commands("a"))
    assert all(e.term != 2 or e.index <= 4 for e in a.log.entries(a.log.first_index(), a.log.last_index() + 1))


def test_follower_with_the_snapshot_entry_keeps_its_log() -> None:
    """If the follower's log already holds the snapshot's last entry, it only
    learns the commit index; nothing is discarded or reinstalled."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    fill(net, "a", 5)
    a, c = net.nodes["a"], net.nodes["c"]
    snap_index = a.commit_index
    msg = InstallSnapshot(a.term, "a", "c", snap_index, a.log.term(snap_index), a.membership.encode())
    before = net.storage["c"].first_index()
    c.step(msg)
    rd = c.ready()
    assert rd.snapshot is None
    net.handle("c", rd)
    assert net.storage["c"].first_index() == before


def test_stale_snapshot_is_acknowledged_without_installing() -> None:
    net = Network(["a", "b", "c"])
    net.elect("a")
    fill(net, "a", 5)
    c = net.nodes["c"]
    msg = InstallSnapshot(c.term, "a", "c", 2, 1, Membership({"a": "x"}).encode())
    c.step(msg)
    rd = c.ready()
    assert rd.snapshot is None
    assert rd.messages_after_persist[-1].success
    assert rd.messages_after_persist[-1].match_index == c.commit_index


def c_steps_the_snapshot() -> tuple[Network, SnapshotMeta]:
    """:func:`lagging_c`, and c steps a's InstallSnapshot (its Ready not taken yet)."""
    net, _ = lagging_c()
    a = net.nodes["a"]
    snap = a.snapshot
    assert snap is not None
    net.nodes["c"].step(InstallSnapshot(a.term, "a", "c", snap.index, snap.term, snap.membership.encode()))
    return net, snap


def test_snapshot_is_recorded_before_the_ack_is_sent() -> None:
    """The acknowledgement of a snapshot promises it is stored: it waits for persistence."""
    net, snap = c_steps_the_snapshot()
    c = net.nodes["c"]
    rd = c.ready()
    assert rd.snapshot == snap
    assert not rd.messages
    assert rd.messages_after_persist[0].match_index == snap.index
    # Until advance(), reads below the snapshot are refused, the boundary answers.
    assert c.log.first_index() == snap.index + 1
    assert c.log.term(snap.index) == snap.term


def test_a_heartbeat_stepped_after_the_snapshot_waits_for_it_to_be_recorded() -> None:
    """A heartbeat from the snapshot's index on, stepped before the snapshot
    is on disk, must not be acknowledged at once: the log as it now stands
    (the snapshot) is not durable yet, and a crash would leave the old log.
    (Found by the simulator: seed 826, membership changes and crashes.)"""
    net, snap = c_steps_the_snapshot()
    c, a = net.nodes["c"], net.nodes["a"]
    c.step(AppendEntries(a.term, "a", "c", snap.index, snap.term, (), a.commit_index, read_ctx=7))
    rd = c.ready()
    assert rd.snapshot == snap and rd.persist_before_step
    assert not [m for m in rd.messages if isinstance(m, AppendEntriesResponse)]
    acks = [m for m in rd.messages_after_persist if isinstance(m, AppendEntriesResponse)]
    assert [(m.success, m.match_index) for m in acks] == [(True, snap.index), (True, snap.index)]
    net.handle("c", rd)
    # Once it is recorded, a heartbeat is answered at once again.
    c.step(AppendEntries(a.term, "a", "c", snap.index, snap.term, (), a.commit_index, read_ctx=8))
    rd = c.ready()
    assert [(m.success, m.match_index) for m in rd.messages if isinstance(m, AppendEntriesResponse)] == [
        (True, snap.index)
    ]


def test_compaction_limit_protects_a_follower_being_sent_a_snapshot() -> None:
    """No install loop: while c is being sent the snapshot at S, the leader
    does not compact past S, so c can continue from S+1 afterwards."""
    net, first = lagging_c()
    until_snapshot_in_flight(net)  # and it stays in flight for now
    assert net.nodes["a"].progress["c"].state is ProgressState.SNAPSHOT
    fill_while_c_waits = 10
    for k in range(fill_while_c_waits):
        net.propose("a", b"y%d" % k)
        net.deliver(lambda m: m.dst != "c" and m.src != "c")
    second = net.take_snapshot("a")
    assert second.index > first.index
    assert net.nodes["a"].compaction_limit() == first.index
    assert net.storage["a"].first_index() == first.index + 1
    net.stabilize()
    net.tick("a", net.config.heartbeat_ticks)
    net.stabilize()
    snaps_to_c = [m for m in net.sent if isinstance(m, InstallSnapshot) and m.dst == "c"]
    assert len(snaps_to_c) == 1
    assert net.commands("c") == net.commands("a")


def test_a_follower_restoring_a_snapshot_for_long_keeps_what_follows_it() -> None:
    """c received the snapshot (the transfer is reported done) and restores
    its state machine from it for longer than an election timeout, answering
    nothing meanwhile: a still keeps the entries after the snapshot for it,
    so c continues from the log instead of needing another snapshot."""
    net, first = lagging_c()
    until_snapshot_in_flight(net)
    held = [m for m in net.inflight if isinstance(m, InstallSnapshot)]
    net.inflight = [m for m in net.inflight if not isinstance(m, InstallSnapshot)]
    a = net.nodes["a"]
    a.report_snapshot("c", success=True)
    net.isolate("c")
    fill(net, "a", 5, b"during")
    let_c_fall_silent(net)
    second = net.take_snapshot("a")
    assert second.index > first.index
    assert a.compaction_limit() == first.index
    assert net.storage["a"].first_index() == first.index + 1
    net.heal()
    net.inflight = held  # restored: c takes the snapshot and answers
    net.stabilize()
    net.tick("a", net.config.heartbeat_ticks)
    net.stabilize()
    assert [m.index for m in net.sent if isinstance(m, InstallSnapshot) and m.dst == "c"] == [first.index]
    assert net.commands("c") == net.commands("a")
    assert a.compaction_limit() == second.index  # c is caught up: nothing holds the log back now


def test_compaction_keeps_what_a_follower_heard_from_lately_needs() -> None:
    """c answered less than an election timeout ago: a snapshot at a does
    not compact the entries c needs next, so c catches up from the log."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    a = net.nodes["a"]
    c_match = a.progress["c"].match
    net.isolate("c")
    fill(net, "a", 10)
    meta = net.take_snapshot("a")
    assert meta.index > c_match + 5
    assert a.compaction_limit() == c_match
    assert net.storage["a"].first_index() == c_match + 1
    net.heal()
    for _ in range(3 * net.config.election_ticks):  # its lost appends time out; then a probes it
        net.tick("a")
        net.stabilize()
    assert not [m for m in net.sent if isinstance(m, InstallSnapshot)]
    assert net.commands("c") == net.commands("a")
    net.take_snapshot("a")  # c is caught up: nothing holds the log back now
    assert net.storage["a"].first_index() == a.applied_index + 1


def test_a_follower_silent_for_an_election_timeout_holds_nothing_back() -> None:
    net = Network(["a", "b", "c"])
    net.elect("a")
    a = net.nodes["a"]
    net.isolate("c")
    fill(net, "a", 10)
    net.take_snapshot("a")
    assert a.compaction_limit() == a.progress["c"].match  # heard from lately
    let_c_fall_silent(net)
    meta = net.take_snapshot("a")
    assert a.compaction_limit() == meta.index
    assert net.storage["a"].first_index() == meta.index + 1


def test_a_follower_further_behind_than_snapshot_entries_holds_nothing_back() -> None:
    net = Network(["a", "b", "c"], config=config(snapshot_entries=5))
    net.elect("a")
    a = net.nodes["a"]
    net.isolate("c")
    fill(net, "a", 4)
    net.take_snapshot("a")
    assert a.compaction_limit() == a.progress["c"].match
    fill(net, "a", 4, b"more")  # now more than 5 behind, still heard from lately
    meta = net.take_snapshot("a")
    assert a.log.last_index() - a.progress["c"].match > 5
    assert a.compaction_limit() == meta.index
    assert net.storage["a"].first_index() == meta.index + 1


def test_a_rejection_from_before_the_snapshot_does_not_send_it_again() -> None:
    """On a network that reorders, c's rejection of a heartbeat sent while
    it lacked the snapshot can arrive after the transfer was reported done:
    it says nothing about c's log any more."""
    net, meta = lagging_c()
    until_snapshot_in_flight(net)
    net.tick("a", net.config.heartbeat_ticks)  # a heartbeat c cannot match yet
    net.deliver(lambda m: isinstance(m, AppendEntries) and m.dst == "c")
    stale = net.inflight[:]
    assert any(isinstance(m, AppendEntriesResponse) and m.src == "c" and not m.success for m in stale)
    net.inflight = []
    net.deliver(lambda m: isinstance(m, InstallSnapshot))  # c installs it; its ack is queued
    ack = net.inflight[:]
    net.inflight = []
    a = net.nodes["a"]
    a.report_snapshot("c", success=True)
    net.inflight = stale + ack  # the old rejection first
    net.stabilize()
    net.tick("a", net.config.heartbeat_ticks)
    net.stabilize()
    assert [m.index for m in net.sent if isinstance(m, InstallSnapshot) and m.dst == "c"] == [meta.index]
    assert a.progress["c"].state is ProgressState.REPLICATE
    assert net.commands("c") == net.commands("a")


def test_failed_transfer_is_retried_on_the_next_heartbeat() -> None:
    net, _ = lagging_c()
    until_snapshot_in_flight(net)
    net.drop(lambda m: isinstance(m, InstallSnapshot))
    a = net.nodes["a"]
    a.report_snapshot("c", success=False)
    assert a.progress["c"].state is ProgressState.PROBE
    net.tick("a", net.config.heartbeat_ticks)
    assert any(isinstance(m, InstallSnapshot) and m.dst == "c" for m in net.inflight)
    net.stabilize()
    assert net.commands("c") == net.commands("a")


def test_restart_after_installing_a_snapshot() -> None:
    net, meta = lagging_c()
    net.tick("a", net.config.heartbeat_ticks)
    net.stabilize()
    net.restart("c")
    c = net.nodes["c"]
    assert c.log.first_index() == meta.index + 1
    assert c.membership.voters.keys() == {"a", "b", "c"}
    fill(net, "a", 2, b"z")
    assert net.commands("c") == net.commands("a")


def test_membership_at_and_snapshot_membership() -> None:
    net = Network(["a", "b", "c"])
    net.elect("a")
    a = net.nodes["a"]
    assert set(a.membership_at(1).voters) == {"a", "b", "c"}
    assert a.membership_at(0) == Membership()


def test_heartbeat_to_a_follower_below_the_first_index_is_well_formed() -> None:
    net, _ = lagging_c()
    until_snapshot_in_flight(net)
    net.drop(lambda m: isinstance(m, InstallSnapshot))
    net.tick("a", net.config.heartbeat_ticks)
    beats = [m for m in net.inflight if isinstance(m, AppendEntries) and m.dst == "c"]
    assert beats and all(m.prev_log_index >= net.storage["a"].first_index() - 1 for m in beats)


def test_applied_entries_keep_their_kinds() -> None:
    net = Network(["a", "b", "c"])
    net.elect("a")
    fill(net, "a", 3)
    kinds = {e.kind for e in net.applied["a"]}
    assert EntryKind.CONFIG in kinds and EntryKind.NORMAL in kinds
    assert isinstance(net.applied["a"][0], Entry)
