"""A full disk, for real: the agent's state folder on a small tmpfs, filled to the last byte.

Covers the three writes the issue names -- the bundle write, the state save, the session
counter -- first on the store and the transfer, then on a real agent process: a full disk
is the named error ``disk_full`` with the free and needed bytes, the state in memory and on
disk stays as it was, the agent keeps serving and announcing itself (also after a reconnect),
reports the problem once (not once per attempt), and works again once space is freed.

Mounting a tmpfs needs root (or CAP_SYS_ADMIN); where that is not allowed the tests are
skipped, and the reason is printed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgeloop.agent.errors import DiskFullError
from edgeloop.agent.store import AgentStore
from edgeloop.agent.transfer import Transfer
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.messages import Chunk, TransferSpec
from tests.agent_rig import AgentRig
from tests.conftest import unavailable, wait_until

SHA_A = "a" * 64
SHA_B = "b" * 64


@pytest.fixture
def small_fs(tmp_path) -> Path:
    """A 4 MiB tmpfs at ``tmp_path/fs``, unmounted afterwards; skipped (reason printed) where mounting fails."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        reason = (f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): "
                  f"{(done.stderr or done.stdout).strip() or f'mount exited {done.returncode}'}")
        print(f"SKIPPED disk-full tests: {reason}")
        unavailable(reason)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(folder: Path) -> Path:
    """Write a ballast file until the file system holding ``folder`` is full, to the last byte; its path."""
    ballast = folder / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return ballast


@pytest.mark.reliability("disk full",
                         "a state save on a full tmpfs (activation, command counter, session counter)",
                         "disk_full with free/needed bytes; memory and state.json unchanged; a later save keeps the "
                         "right pointer")
def test_the_state_save_on_a_full_disk_is_disk_full_and_changes_nothing(small_fs, faults_tried):
    faults_tried(3)
    s = AgentStore(small_fs / "state")
    s.install(SHA_A, b"a", "demo", "1")
    s.install(SHA_B, b"b", "demo", "2")
    on_disk = (small_fs / "state" / "state.json").read_bytes()
    ballast = _fill(small_fs)
    for change in (lambda: s.activate(SHA_A), lambda: s.accept_counter("k", 1), s.next_session):
        with pytest.raises(DiskFullError) as err:
            change()
        assert err.value.code == "disk_full" and err.value.needed > 0 and err.value.free is not None
        assert "bytes free" in str(err.value) and "free some space" in str(err.value)
    assert s.active().sha256 == SHA_B and s.counters() == {} and s.state.session == 0  # memory as it was
    assert (small_fs / "state" / "state.json").read_bytes() == on_disk  # and the disk
    ballast.unlink()
    s.accept_counter("k", 1)  # an unrelated save, once space is back, persists the right pointer
    assert AgentStore(small_fs / "state").active().sha256 == SHA_B


@pytest.mark.reliability("disk full", "a bundle write on a full tmpfs (transfer reservation, whole-bundle write)",
                         "disk_full with the needed bytes; nothing left on disk; works once space is freed")
def test_the_bundle_write_on_a_full_disk_is_disk_full_and_leaves_nothing(small_fs, faults_tried):
    faults_tried(2)
    s = AgentStore(small_fs / "state")
    data = os.urandom(3 * 1024 * 1024)  # fits the 4 MiB disk once, not twice
    spec = TransferSpec("12" * 16, hashlib.sha256(data).hexdigest(), len(data), 65536, -(-len(data) // 65536))
    (small_fs / "other").write_bytes(os.urandom(2 * 1024 * 1024))
    with pytest.raises(DiskFullError) as err:  # the .part reserves the whole bundle at once
        Transfer.open(s.incoming_dir, spec, "cmd-1")
    assert err.value.needed == len(data) and err.value.free < len(data)
    assert list(s.incoming_dir.iterdir()) == []
    with pytest.raises(DiskFullError):  # a bundle written whole (store.install)
        s.install(SHA_A, data, "demo", "1")
    assert s.active() is None and list(s.bundles_dir.iterdir()) == []
    (small_fs / "other").unlink()
    t = Transfer.open(s.incoming_dir, spec, "cmd-1")
    for i in range(spec.chunks):
        t.write(Chunk(spec.transfer_id, i, data[i * 65536:(i + 1) * 65536]))
    s.install_file(spec.bundle_sha256, t.finish(), "demo", "1")
    assert s.read_bundle(spec.bundle_sha256) == data


@pytest.mark.broker
@pytest.mark.reliability("disk full",
                         "a real agent on a full tmpfs: a deploy, then a forced reconnect",
                         "deploy refused disk_full; state and online still sent, one disk_full event; serves "
                         "throughout; the deploy works once space is freed")
def test_an_agent_on_a_full_disk_refuses_with_disk_full_keeps_serving_and_announcing(small_fs, tmp_path, mosquitto,
                                                                                     faults_tried):
    faults_tried(2)
    aid = f"full-{uuid.uuid4().hex[:8]}"
    with AgentRig(tmp_path, mosquitto, state_root=small_fs) as rig:  # logs off the full disk
        config = rig.prepare(aid, ("1",), min_free_bytes=0)
        rig.procs[aid] = rig.start(config)
        assert rig.online([aid]), rig.procs[aid].log()
        state_path = small_fs / f"{aid}-state" / "state.json"
        before = json.loads(state_path.read_text())
        ballast = _fill(small_fs)

        # the state save that accepts a command fails: refused with disk_full, the free/needed bytes, its id
        cid = rig.deploy(aid, "2")
        assert wait_until(lambda: rig.finals(cid, ("command_result",)), 20), rig.procs[aid].log()
        [refused] = rig.finals(cid, ("command_result",))
        assert (refused["ok"], refused["code"]) == (False, "disk_full"), refused
        assert refused["details"]["needed"] > 0 and refused["details"]["free"] is not None
        assert rig.serving_version(aid) == "1"  # keeps serving

        # a reconnect while the disk is full: the session counter cannot be saved; state and online still go out
        states = rig.states.get(aid, 0)
        connected = threading.Event()
        kicker = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgeloop-agent-{aid}")
        kicker.on_connect = lambda *a: connected.set()
        kicker.connect(mosquitto.address.host, mosquitto.address.port)  # takes the agent's connection over
        kicker.loop_start()
        assert connected.wait(10)
        kicker.disconnect()  # and leaves: the agent reconnects
        kicker.loop_stop()
        assert wait_until(lambda: rig.states.get(aid, 0) > states and rig.status.get(aid) == topics.ONLINE, 30), \
            rig.procs[aid].log()
        assert rig.serving_version(aid) == "1"
        errors = [e for e in rig.events_of(aid) if e.get("event") == "error"]
        full = [e for e in errors if e.get("code") == "disk_full"]
        assert len(full) == 1 and "session counter" in full[0]["message"], errors  # once, with the numbers
        assert full[0]["details"]["needed"] > 0
        assert not [e for e in errors if e.get("code") == "internal"], errors
        assert json.loads(state_path.read_text()) == before  # nothing half-written

        # space again: the same deploy goes through, and the state on disk names it
        ballast.unlink()
        cid = rig.deploy(aid, "2")
        assert wait_until(lambda: rig.finals(cid), 30), rig.procs[aid].log()
        assert [e["ok"] for e in rig.finals(cid)] == [True]
        assert json.loads(state_path.read_text())["active"] == rig.sha["2"]
        assert rig.serving_version(aid) == "2"
