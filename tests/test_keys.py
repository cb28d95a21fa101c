"""The hub's signing key on disk: created private, reloaded identical, refused when exposed."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from edgeloop.agent.errors import KeyFileError
from edgeloop.agent.wire.envelope import (
    MANIFEST_PAYLOAD_TYPE,
    TrustedKeys,
    canonical_json,
    sign_detached,
    verify_detached,
)
from edgeloop.hub.home import Home
from edgeloop.hub.keys import (
    export_public_pem,
    load_or_create_hub_key,
    private_key_path,
    public_key_path,
)

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@posix_only
def test_key_created_private_and_reloaded_identical(tmp_path):
    key = load_or_create_hub_key(tmp_path)
    path = private_key_path(tmp_path)
    assert path == tmp_path / "keys" / "hub_ed25519.pem"
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert mode(public_key_path(tmp_path)) == 0o644
    assert len(key.keyid) == 16

    again = load_or_create_hub_key(tmp_path)
    assert again.keyid == key.keyid
    assert again.private_pem() == key.private_pem()
    assert path.read_bytes() == key.private_pem()
    # no temporary files left behind
    assert sorted(p.name for p in path.parent.iterdir()) == ["hub_ed25519.pem", "hub_ed25519.pub.pem"]


@posix_only
def test_key_is_0600_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        load_or_create_hub_key(tmp_path)
    finally:
        os.umask(old)
    assert mode(private_key_path(tmp_path)) == 0o600
    assert mode(private_key_path(tmp_path).parent) == 0o700


def test_public_key_verifies_the_hubs_signatures(tmp_path):
    key = load_or_create_hub_key(Home(tmp_path))  # a Home works as well as its root
    pem = export_public_pem(tmp_path)
    assert pem == public_key_path(tmp_path).read_bytes() == key.public_pem()
    payload = canonical_json({"model": "iris"})
    doc = canonical_json(sign_detached(key, MANIFEST_PAYLOAD_TYPE, payload))
    signed = verify_detached(doc, payload, MANIFEST_PAYLOAD_TYPE, TrustedKeys.from_pems([pem]))
    assert signed.keyid == key.keyid


@pytest.mark.reliability("signing keys", "a stale or missing public key file", "rewritten from the private key")
def test_stale_public_key_file_is_rewritten(tmp_path, faults_tried):
    faults_tried(2)
    key = load_or_create_hub_key(tmp_path)
    public_key_path(tmp_path).write_bytes(b"-----BEGIN PUBLIC KEY-----\nstale\n-----END PUBLIC KEY-----\n")
    load_or_create_hub_key(tmp_path)
    assert public_key_path(tmp_path).read_bytes() == key.public_pem()
    public_key_path(tmp_path).unlink()
    assert export_public_pem(tmp_path) == key.public_pem()
    assert public_key_path(tmp_path).exists()


@posix_only
@pytest.mark.reliability("signing keys", "the hub's private key readable by others (0644, 0640)",
                         "refused, saying the chmod to run")
def test_world_readable_key_is_refused_with_chmod_hint(tmp_path, faults_tried):
    faults_tried(2)
    load_or_create_hub_key(tmp_path)
    path = private_key_path(tmp_path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError) as err:
        load_or_create_hub_key(tmp_path)
    assert f"chmod 600 {path}" in str(err.value)
    assert err.value.code == "key_file"
    os.chmod(path, 0o640)  # group-readable is refused too
    with pytest.raises(KeyFileError):
        export_public_pem(tmp_path)
    os.chmod(path, 0o600)
    assert load_or_create_hub_key(tmp_path).keyid


@posix_only
@pytest.mark.reliability("signing keys", "a corrupt private key file",
                         "an error naming the file and the backup; never overwritten")
def test_corrupt_key_file_is_named_in_the_error(tmp_path):
    path = private_key_path(tmp_path)
    path.parent.mkdir(mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, b"-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n")
    os.close(fd)
    with pytest.raises(KeyFileError) as err:
        load_or_create_hub_key(tmp_path)
    assert str(path) in str(err.value)
    assert "backup" in str(err.value)
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\nnot")  # never overwritten


@posix_only
@pytest.mark.reliability("signing keys", "the keys folder open to others (0755)", "tightened to 0700")
def test_loose_keys_directory_is_tightened(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o755)
    os.chmod(keys, 0o755)
    load_or_create_hub_key(tmp_path)
    assert mode(keys) == 0o700


@pytest.mark.reliability("signing keys", "six threads create the hub key at once", "all get the same key")
def test_concurrent_first_use_agrees_on_one_key(tmp_path):
    ids: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def create() -> None:
        barrier.wait()
        try:
            ids.append(load_or_create_hub_key(tmp_path).keyid)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(ids) == 6 and len(set(ids)) == 1
    assert load_or_create_hub_key(tmp_path).keyid == ids[0]
