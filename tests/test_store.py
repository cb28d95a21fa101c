"""The agent's on-disk store and chunked transfers: atomic, restart-safe, real files."""

import hashlib
import json
import os
import random
import stat
import time

import pytest

from edgeloop.agent.errors import HashMismatchError, StoreError, TransferError
from edgeloop.agent.fsutil import atomic_write_bytes, atomic_write_json, fsync_dir
from edgeloop.agent.store import AgentStore
from edgeloop.agent.transfer import BITMAP_SAVE_BYTES, BITMAP_SAVE_IDLE, Transfer
from edgeloop.agent.wire.messages import Chunk, TransferSpec

SHA_A = "a" * 64
SHA_B = "b" * 64
SHA_C = "c" * 64


def test_install_activate_and_reopen(tmp_path):
    s = AgentStore(tmp_path)
    s.install(SHA_A, b"bundle-a", "demo", "1")
    s.install(SHA_B, b"bundle-b", "demo", "2")
    assert s.active().sha256 == SHA_B
    s.accept_counter("k1", 3)
    s2 = AgentStore(tmp_path)  # a restart
    assert s2.active().version == "2"
    assert s2.state.history == [SHA_A]
    assert s2.counters() == {"k1": 3}
    assert s2.read_bundle(SHA_A) == b"bundle-a"


def test_rollback_pointer(tmp_path):
    s = AgentStore(tmp_path)
    s.install(SHA_A, b"a", "demo", "1")
    s.install(SHA_B, b"b", "demo", "2")
    s.activate(SHA_A)
    assert s.active().version == "1" and s.state.history == [SHA_B]
    with pytest.raises(StoreError, match="not installed"):
        s.activate(SHA_C)


@pytest.mark.reliability("signed commands", "a command counter used twice (store)", "refused; the saved counter stays")
def test_counter_must_increase(tmp_path):
    s = AgentStore(tmp_path)
    s.accept_counter("k", 5)
    with pytest.raises(StoreError):
        s.accept_counter("k", 5)
    assert AgentStore(tmp_path).counters()["k"] == 5


@pytest.mark.reliability("crash consistency",
                         "a crash mid-write leaves half a state.json and half a bundle as temporary files",
                         "the old state is read; start-up removes the temporaries")
def test_interrupted_write_leaves_old_state(tmp_path, faults_tried):
    """A crash mid-write leaves a .tmp file beside the old state; the next start ignores and removes it."""
    faults_tried(2)
    s = AgentStore(tmp_path)
    s.install(SHA_A, b"a", "demo", "1")
    (tmp_path / ".tmp-state.json.999").write_text('{"half": ')
    (tmp_path / "bundles" / f".tmp-{SHA_B}.elb.999").write_bytes(b"half a bundle")
    s2 = AgentStore(tmp_path)
    assert s2.active().sha256 == SHA_A
    s2.collect_garbage()  # the agent's start-up
    assert not list(tmp_path.rglob(".tmp-*"))


@pytest.mark.reliability("state files", "the active bundle's file deleted from disk",
                         "the previous version becomes active")
def test_missing_bundle_file_falls_back(tmp_path):
    s = AgentStore(tmp_path)
    s.install(SHA_A, b"a", "demo", "1")
    s.install(SHA_B, b"b", "demo", "2")
    os.unlink(s.bundle_path(SHA_B))
    s2 = AgentStore(tmp_path)
    assert s2.active().sha256 == SHA_A


@pytest.mark.reliability("state files", "state.json corrupt (store)",
                         "falls back to state.prev.json with its counters; the bad file kept aside")
def test_a_corrupt_state_falls_back_to_the_previous_copy_and_keeps_the_bad_one(tmp_path):
    s = AgentStore(tmp_path)
    s.install(SHA_A, b"a", "demo", "1")
    s.install(SHA_B, b"b", "demo", "2")
    s.accept_counter("k", 7)
    (tmp_path / "state.json").write_text("{nope")  # bit rot, a hand edit, a file system that lost the data
    s2 = AgentStore(tmp_path)
    assert s2.recovered and "state.prev.json" in s2.recovered
    assert s2.active().sha256 == SHA_B and s2.counters() == {"k": 7} and s2.state.history == [SHA_A]
    assert (tmp_path / "state.json.unreadable").read_text() == "{nope"
    assert s2.unclaimed == [] and s2.bundle_path(SHA_A).exists()  # nothing collected: the copy names them


@pytest.mark.reliability("state files", "state.json and state.prev.json both unreadable (store)",
                         "no version active; the bundles on disk kept for re-verification")
def test_with_no_readable_state_the_bundles_on_disk_are_kept_unclaimed_for_re_verification(tmp_path):
    s = AgentStore(tmp_path)
    s.install(SHA_A, b"a", "demo", "1")
    s.install(SHA_B, b"b", "demo", "2")
    for name in ("state.json", "state.prev.json"):
        (tmp_path / name).write_text("[]")
    s2 = AgentStore(tmp_path)
    assert s2.active() is None and s2.unclaimed == [SHA_A, SHA_B] and "no readable copy" in s2.recovered
    s2.adopt(SHA_B, "demo", "2", 1.0)
    s2.forget_unclaimed(SHA_A)
    assert not s2.bundle_path(SHA_A).exists() and s2.unclaimed == []
    s3 = AgentStore(tmp_path)
    assert s3.recovered is None and [b.sha256 for b in s3.installed()] == [SHA_B]


@pytest.mark.reliability("state files", "every save fails (activate, counter, session, deactivate, install)",
                         "each raises 'could not save'; memory and disk unchanged; no bundle file left")
def test_a_failed_save_changes_nothing_in_memory_or_on_disk(tmp_path, faults_tried):
    faults_tried(5)
    s = AgentStore(tmp_path)
    s.install(SHA_A, b"a", "demo", "1")
    s.install(SHA_B, b"b", "demo", "2")
    before = (tmp_path / "state.json").read_bytes()
    (tmp_path / "state.json").unlink()
    (tmp_path / "state.json").mkdir()  # a save cannot replace a non-empty folder: every save fails
    (tmp_path / "state.json" / "x").write_text("x")
    for change in (lambda: s.activate(SHA_A), lambda: s.accept_counter("k", 1), s.next_session, s.deactivate,
                   lambda: s.install(SHA_C, b"c", "demo", "3")):
        with pytest.raises(StoreError, match="could not save"):
            change()
    assert s.active().sha256 == SHA_B and s.counters() == {} and s.state.session == 0
    assert s.get(SHA_C) is None and not s.bundle_path(SHA_C).exists()  # its file went with the failed save
    (tmp_path / "state.json" / "x").unlink()
    (tmp_path / "state.json").rmdir()
    (tmp_path / "state.json").write_bytes(before)
    s.accept_counter("k", 1)  # an unrelated save later persists the right pointer
    assert AgentStore(tmp_path).active().sha256 == SHA_B


@pytest.mark.reliability("crash consistency",
                         "bundle files no state references (crash leftovers, junk) beside a journalled one",
                         "start-up removes them, not a second process; the journalled one kept until settled")
def test_start_up_removes_bundles_no_state_references_but_keeps_journalled_ones(tmp_path, faults_tried):
    faults_tried(3)
    s = AgentStore(tmp_path)
    s.install(SHA_A, b"a", "demo", "1")
    s.accept_counter("k", 1, "cmd-1", {"event": "install_result", "bundle_sha256": SHA_C})
    (tmp_path / "bundles" / f"{SHA_B}.elb").write_bytes(b"left by a crash")
    (tmp_path / "bundles" / f"{SHA_C}.elb").write_bytes(b"renamed in, state not yet saved")
    (tmp_path / "bundles" / "junk.txt").write_bytes(b"?")
    s2 = AgentStore(tmp_path)
    assert len(list((tmp_path / "bundles").iterdir())) == 4  # a second process (edgeloop-agent status) removes nothing
    s2.collect_garbage()  # the agent's start-up
    assert sorted(p.name for p in (tmp_path / "bundles").iterdir()) == [f"{SHA_A}.elb", f"{SHA_C}.elb"]
    assert s2.pending() == {"cmd-1": {"event": "install_result", "bundle_sha256": SHA_C}}
    s2.settle("cmd-1")
    s3 = AgentStore(tmp_path)
    assert s3.pending() == {}
    s3.collect_garbage()
    assert sorted(p.name for p in (tmp_path / "bundles").iterdir()) == [f"{SHA_A}.elb"]


def test_session_numbers_never_go_back(tmp_path):
    s = AgentStore(tmp_path)
    assert s.next_session() == 1 and s.next_session(minimum=5) == 5 and s.next_session(minimum=2) == 6
    assert AgentStore(tmp_path).state.session == 6


@pytest.mark.reliability("state files", "a bundle id of ../../etc/passwd", "refused")
def test_bad_sha_is_refused(tmp_path):
    with pytest.raises(StoreError):
        AgentStore(tmp_path).bundle_path("../../etc/passwd")


def test_history_is_pruned(tmp_path):
    s = AgentStore(tmp_path)
    shas = [f"{i:064x}" for i in range(15)]
    for i, sha in enumerate(shas):
        s.install(sha, b"x", "demo", str(i))
    assert len(s.installed()) == 10
    assert not s.bundle_path(shas[0]).exists()
    assert s.bundle_path(shas[-1]).exists()


# --- transfers ------------------------------------------------------------------
def _spec(data: bytes, chunk: int) -> TransferSpec:
    n = -(-len(data) // chunk)
    return TransferSpec("12" * 16, hashlib.sha256(data).hexdigest(), len(data), chunk, n)


def _chunks(spec, data):
    return [Chunk(spec.transfer_id, i, data[i * spec.chunk_size:(i + 1) * spec.chunk_size]) for i in range(spec.chunks)]


def _finished(t: Transfer) -> bytes:
    path = t.finish()
    assert path == t.part_path
    return path.read_bytes()


def test_transfer_out_of_order_with_duplicates(tmp_path):
    data = os.urandom(10_000)
    spec = _spec(data, 1000)
    t = Transfer.open(tmp_path, spec, "cmd-1")
    chunks = _chunks(spec, data)
    for c in reversed(chunks):
        assert t.write(c)
    assert not t.write(chunks[0])  # duplicate
    assert t.complete and _finished(t) == data


@pytest.mark.parametrize("order", ["in order", "gaps filled later", "backwards", "shuffled"])
def test_the_incremental_hash_is_right_in_any_arrival_order(tmp_path, order):
    """The sha256 grows over the contiguous prefix; chunks after a gap are read back when it is filled."""
    data = os.urandom(50_000 + 123)
    spec = _spec(data, 1000)
    idx = list(range(spec.chunks))
    if order == "gaps filled later":
        idx = [i for i in idx if i % 7] + [i for i in idx if not i % 7]
    elif order == "backwards":
        idx.reverse()
    elif order == "shuffled":
        random.Random(7).shuffle(idx)
    t = Transfer.open(tmp_path, spec, "c")
    chunks = _chunks(spec, data)
    for i in idx:
        assert t.write(chunks[i])
    assert _finished(t) == data
    evil = bytearray(data)
    evil[-1] ^= 1  # the last byte differs: the hash must cover every chunk
    (tmp_path / "again").mkdir()
    t2 = Transfer.open(tmp_path / "again", spec, "c")
    for i in idx:
        t2.write(_chunks(spec, bytes(evil))[i])
    with pytest.raises(HashMismatchError, match="promised"):
        t2.finish()


def test_a_transfer_is_fsynced_once_at_the_end_and_its_bitmap_saved_by_size_idle_and_close(tmp_path, monkeypatch):
    data = os.urandom(6 * 1024 * 1024 + 5)
    spec = _spec(data, 64 * 1024)
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    t = Transfer.open(tmp_path, spec, "c")
    chunks = _chunks(spec, data)

    def on_disk() -> int:
        return json.loads(t.info_path.read_text())["received"].count("1")

    synced.clear()
    for c in chunks[:10]:
        t.write(c)
    assert on_disk() == 0 and synced == []  # 640 KiB: below the save threshold, no fsync yet
    assert not t.save_if_idle(t.last_activity + BITMAP_SAVE_IDLE / 2)
    assert t.save_if_idle(t.last_activity + BITMAP_SAVE_IDLE)  # the transfer went quiet: saved
    assert on_disk() == 10
    for c in chunks[10:20]:
        t.write(c)
    t.close()  # a clean stop saves what came
    (resumed,) = Transfer.load_pending(tmp_path)
    assert resumed.count_received == 20 and resumed.missing(5) == [20, 21, 22, 23, 24]
    synced.clear()
    for c in chunks[20:]:
        resumed.write(c)
    # one save by size on the way, one when the last chunk landed (a crash while installing resumes complete)
    assert BITMAP_SAVE_BYTES // spec.chunk_size < spec.chunks - 20 and on_disk() == spec.chunks
    saves = len(synced)
    assert _finished(resumed) == data
    assert len(synced) == saves + 1  # and one fsync of the data at the end


@pytest.mark.reliability("crash consistency", "a power cut mid-transfer after chunks the bitmap did not save yet",
                         "only saved chunks are claimed; the rest asked again; the bundle arrives whole")
def test_transfer_resumes_after_restart(tmp_path):
    data = os.urandom(100_000)
    spec = _spec(data, 1000)
    t = Transfer.open(tmp_path, spec, "cmd-1", {"model": "demo"}, expires_at=123.5)
    chunks = _chunks(spec, data)
    for c in chunks[:40]:
        t.write(c)
    t.save_if_idle(t.last_activity + BITMAP_SAVE_IDLE)
    for c in chunks[40:45]:
        t.write(c)
    os.close(t._fd)  # power cut: what came after the last save is not claimed
    (resumed,) = Transfer.load_pending(tmp_path)
    assert resumed.command_id == "cmd-1" and resumed.meta == {"model": "demo"} and resumed.expires_at == 123.5
    assert resumed.count_received == 40 and resumed.missing(1) == [40]
    for i in resumed.missing():
        resumed.write(chunks[i])
    assert _finished(resumed) == data


def test_install_file_moves_a_finished_transfer_into_the_store_without_copying(tmp_path):
    s = AgentStore(tmp_path)
    s.install(SHA_A, b"a", "demo", "1")
    data = os.urandom(5000)
    spec = _spec(data, 1000)
    t = Transfer.open(s.incoming_dir, spec, "c")
    for c in _chunks(spec, data):
        t.write(c)
    path = t.finish()
    inode = path.stat().st_ino
    s.install_file(spec.bundle_sha256, path, "demo", "2")
    assert not path.exists() and s.bundle_path(spec.bundle_sha256).stat().st_ino == inode  # renamed
    reopened = AgentStore(tmp_path)
    assert reopened.active().version == "2" and reopened.state.history == [SHA_A]
    assert reopened.read_bundle(spec.bundle_sha256) == data


@pytest.mark.reliability("crash consistency",
                         "a power cut while a finished transfer moves into the store; an orphan .part",
                         "both removed when transfers are loaded")
def test_leftovers_of_an_interrupted_finish_are_removed(tmp_path, faults_tried):
    faults_tried(2)
    data = os.urandom(3000)
    spec = _spec(data, 1000)
    t = Transfer.open(tmp_path, spec, "c")
    t.close()
    t.part_path.unlink()  # renamed into the store, then the power went before the record was removed
    orphan = tmp_path / ("56" * 16 + ".part")  # a .part whose record is gone
    orphan.write_bytes(b"x")
    assert Transfer.load_pending(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.reliability("crash consistency",
                         "a crash after the last chunk landed, a temporary leftover, a record without expiry",
                         "resumes complete with the right hash, gets an expiry, leftover removed")
def test_a_transfer_whose_last_chunk_landed_resumes_complete_and_records_without_expiry_get_one(tmp_path):
    data = os.urandom(3000)
    spec = _spec(data, 1000)
    t = Transfer.open(tmp_path, spec, "c")  # no expiry: an older agent's record
    for c in _chunks(spec, data):
        t.write(c)
    # the process dies here (no close): the record was saved when the last chunk landed
    (tmp_path / ".tmp-x.json.1.ab").write_text("{")  # and an interrupted write beside it
    [resumed] = Transfer.load_pending(tmp_path, default_lifetime=3600.0)
    assert resumed.complete and _finished(resumed) == data
    assert resumed.expires_at is not None and 3000 < resumed.expires_at - time.time() <= 3600
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{spec.transfer_id}.json", f"{spec.transfer_id}.part"]


@pytest.mark.reliability("transfers",
                         "chunks out of range, of the wrong length, of another transfer; finishing incomplete",
                         "each refused with the reason")
def test_transfer_refuses_bad_chunks(tmp_path, faults_tried):
    faults_tried(4)
    data = os.urandom(3000)
    spec = _spec(data, 1000)
    t = Transfer.open(tmp_path, spec, "c")
    with pytest.raises(TransferError, match="outside"):
        t.write(Chunk(spec.transfer_id, 7, b"x" * 1000))
    with pytest.raises(TransferError, match="bytes, expected"):
        t.write(Chunk(spec.transfer_id, 0, b"x" * 10))
    with pytest.raises(TransferError, match="another transfer"):
        t.write(Chunk("34" * 16, 0, b"x" * 1000))
    with pytest.raises(TransferError, match="incomplete"):
        t.finish()


@pytest.mark.reliability("transfers", "a transfer one bit off the promised sha256",
                         "refused at the finish (hash mismatch)")
def test_transfer_hash_mismatch(tmp_path):
    data = os.urandom(3000)
    spec = _spec(data, 1000)
    t = Transfer.open(tmp_path, spec, "c")
    evil = bytearray(data)
    evil[5] ^= 1
    for c in _chunks(spec, bytes(evil)):
        t.write(c)
    with pytest.raises(HashMismatchError, match="promised"):
        t.finish()


@pytest.mark.reliability("state files", "an unreadable transfer record", "dropped when transfers are loaded")
def test_unreadable_transfer_record_dropped(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"spec": {"size": 1}}))
    assert Transfer.load_pending(tmp_path) == []
    assert not (tmp_path / "x.json").exists()


# --- store edges -----------------------------------------------------------------------------------
@pytest.mark.reliability("state files", "state.json of a future schema", "refused, saying to upgrade the agent")
def test_state_of_another_schema_is_refused_with_what_to_do(tmp_path):
    AgentStore(tmp_path).install(SHA_A, b"a", "demo", "1")
    doc = json.loads((tmp_path / "state.json").read_text())
    doc["schema"] = 99
    (tmp_path / "state.json").write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="schema 99 is not 1; upgrade the agent"):
        AgentStore(tmp_path)


def test_lookups_deactivate_and_a_missing_bundle_file(tmp_path):
    s = AgentStore(tmp_path)
    s.install(SHA_A, b"a", "demo", "1")
    s.install(SHA_B, b"b", "demo", "2")
    assert s.find("demo", "1").sha256 == SHA_A and s.find("demo", "3") is None
    assert s.get(SHA_B).version == "2" and s.get(SHA_C) is None
    assert s.has_bundle(SHA_A) and not s.has_bundle(SHA_C)
    with pytest.raises(StoreError, match=f"bundle {SHA_C[:12]} is not in this agent's store"):
        s.read_bundle(SHA_C)
    s.deactivate()
    assert s.active() is None
    reopened = AgentStore(tmp_path)
    assert reopened.active() is None and {b.sha256 for b in reopened.installed()} == {SHA_A, SHA_B}
    os.unlink(s.bundle_path(SHA_A))  # removed behind the store's back
    assert not s.has_bundle(SHA_A)


def test_pruned_bundle_already_gone_from_disk_is_no_error(tmp_path):
    s = AgentStore(tmp_path)
    shas = [f"{i:064x}" for i in range(1, 12)]
    s.install(shas[0], b"first", "demo", "0")
    os.unlink(s.bundle_path(shas[0]))  # its file vanished; pruning it later must not fail
    for i, sha in enumerate(shas[1:], 1):
        s.install(sha, b"x", "demo", str(i))
    assert shas[0] not in {b.sha256 for b in s.installed()} and s.active().sha256 == shas[-1]


# --- fsutil -----------------------------------------------------------------------------------------
def test_atomic_write_replaces_whole_files_with_the_given_mode(tmp_path):
    path = tmp_path / "secret.bin"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"new", mode=0o600)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    atomic_write_json(tmp_path / "doc.json", {"b": 1, "a": [1.5]})
    assert (tmp_path / "doc.json").read_text() == '{\n "a": [\n  1.5\n ],\n "b": 1\n}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc.json", "secret.bin"]  # no temporary left


@pytest.mark.reliability("state files", "an atomic write onto a non-empty folder, and into a missing folder",
                         "raises; the target kept, no temporary left")
def test_a_failed_atomic_write_leaves_the_target_and_no_temporary(tmp_path, faults_tried):
    faults_tried(2)
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "inside").write_text("keep")  # a non-empty folder cannot be replaced by a file
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"data")
    assert (target / "inside").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied"]
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "no-such-folder" / "f", b"data")


def test_fsync_dir_of_a_missing_folder_is_a_no_op(tmp_path):
    fsync_dir(tmp_path / "gone")  # nothing to sync, nothing raised
    fsync_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []


SHORT_WRITE = r"""
import hashlib, os, resource, signal, sys
from edgeloop.agent.errors import TransferError
from edgeloop.agent.transfer import Transfer
from edgeloop.agent.wire.messages import Chunk, TransferSpec
data = os.urandom(3000)
spec = TransferSpec("12" * 16, hashlib.sha256(data).hexdigest(), 3000, 1000, 3)
t = Transfer.open(sys.argv[1], spec, "c")  # the file has its full size already
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))  # a write past 1500 bytes stops short there
t.write(Chunk(spec.transfer_id, 0, data[:1000]))
try:
    t.write(Chunk(spec.transfer_id, 1, data[1000:2000]))  # 500 bytes fit, then the kernel says EFBIG
except TransferError as exc:
    print("refused:", exc)
print("received:", list(t.received))
"""


@pytest.mark.reliability("disk full", "a chunk write cut short by the kernel (RLIMIT_FSIZE)",
                         "the chunk refused, never marked received")
def test_a_short_write_of_a_chunk_is_never_taken_for_the_whole_chunk(tmp_path):
    """A real short pwrite (RLIMIT_FSIZE cuts it): the rest is written or the chunk refused, never marked received."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", SHORT_WRITE, str(tmp_path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "refused: cannot write chunk 1" in out.stdout and "received: [1, 0, 0]" in out.stdout, out.stdout
