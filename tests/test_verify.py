"""Pure verification of bundles and commands: every refusal path, no I/O."""

import io
import json
import tarfile
import time

import pytest

from edgeloop.agent.errors import (
    BundleFormatError,
    BundleTooLargeError,
    EdgeloopError,
    ExpiredCommandError,
    HashMismatchError,
    MessageFormatError,
    MissingFileError,
    ReplayError,
    SignatureError,
    SizeMismatchError,
    UnexpectedFileError,
    UnknownCommandError,
    UntrustedKeyError,
    WrongTargetError,
)
from edgeloop.agent.wire.bundle import inspect_bundle, read_container, verify_bundle, write_container
from edgeloop.agent.wire.commands import verify_command
from edgeloop.agent.wire.envelope import SigningKey, b64e, canonical_json
from tests.factories import make_bundle, make_command, make_manifest, trusted


@pytest.fixture(scope="module")
def key():
    return SigningKey.generate()


def test_good_bundle_verifies(key):
    data = make_bundle(key)
    vb = verify_bundle(data, trusted(key))
    assert vb.keyid == key.keyid
    assert vb.manifest.model_name == "demo"
    assert vb.model_bytes == b"not really onnx but hashed all the same"


def test_bundle_bytes_are_deterministic(key):
    files = {"model.onnx": b"xyz"}
    man = make_manifest(key, files)
    from edgeloop.agent.wire.bundle import pack_bundle

    assert pack_bundle(man, files, key) == pack_bundle(man, files, key)


def _flip_in(data: bytes, needle: bytes) -> bytes:
    i = data.index(needle)
    out = bytearray(data)
    out[i] ^= 0x01
    return bytes(out)


def test_flipped_byte_in_model_refused(key):
    data = make_bundle(key)
    with pytest.raises(HashMismatchError, match="model.onnx"):
        verify_bundle(_flip_in(data, b"hashed all"), trusted(key))


def test_flipped_byte_in_manifest_refused(key):
    data = make_bundle(key)
    with pytest.raises(SignatureError, match="altered"):
        verify_bundle(_flip_in(data, b'"model_name":"demo"'), trusted(key))


def test_every_single_byte_flip_is_refused(key):
    """Exhaustive over the signed region: no flip of manifest, signature or model passes."""
    data = make_bundle(key)
    passed = []
    for i in range(0, len(data), 7):
        bad = bytearray(data)
        bad[i] ^= 0xFF
        try:
            vb = verify_bundle(bytes(bad), trusted(key))
        except Exception as exc:
            assert isinstance(exc, EdgeloopError), (i, exc)
            continue
        # flips in tar padding/headers that do not change content are harmless: content must be identical
        good = verify_bundle(data, trusted(key))
        if (vb.manifest_bytes, dict(vb.files)) != (good.manifest_bytes, dict(good.files)):
            passed.append(i)
    assert passed == []


def test_truncated_bundle_refused(key):
    data = make_bundle(key)
    model_at = data.index(b"not really onnx")
    for cut in (10, 600, data.index(b'"model_name"'), model_at, model_at + 5):
        with pytest.raises((BundleFormatError, MissingFileError)):
            verify_bundle(data[:cut], trusted(key))


def test_wrong_key_refused(key):
    other = SigningKey.generate()
    with pytest.raises(UntrustedKeyError, match="Provision"):
        verify_bundle(make_bundle(other), trusted(key))


def test_unsigned_and_unexpected_entries(key):
    raw = read_container(make_bundle(key))
    no_sig = io.BytesIO()
    with tarfile.open(fileobj=no_sig, mode="w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(raw.manifest)
        tar.addfile(info, io.BytesIO(raw.manifest))
    with pytest.raises(BundleFormatError, match="unsigned"):
        verify_bundle(no_sig.getvalue(), trusted(key))
    extra = write_container(raw.manifest, raw.signature, {**raw.files, "evil.sh": b"rm -rf /"})
    with pytest.raises(UnexpectedFileError, match="evil.sh"):
        verify_bundle(extra, trusted(key))
    missing = write_container(raw.manifest, raw.signature, {})
    with pytest.raises(MissingFileError):
        verify_bundle(missing, trusted(key))
    short = write_container(raw.manifest, raw.signature, {"model.onnx": raw.files["model.onnx"][:-1]})
    with pytest.raises(SizeMismatchError):
        verify_bundle(short, trusted(key))


def test_path_traversal_entry_refused(key):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(BundleFormatError, match="leave the bundle"):
        verify_bundle(buf.getvalue(), trusted(key))


def test_size_cap(key):
    data = make_bundle(key)
    with pytest.raises(BundleTooLargeError):
        verify_bundle(data, trusted(key), max_size=100)


def test_manifest_signed_but_invalid_is_refused(key):
    from edgeloop.agent.wire.envelope import MANIFEST_PAYLOAD_TYPE, sign_detached
    from edgeloop.agent.wire.messages import dumps

    bad_manifest = canonical_json({"kind": "edgeloop.bundle", "schema": 1})
    sig = dumps(sign_detached(key, MANIFEST_PAYLOAD_TYPE, bad_manifest))
    with pytest.raises(BundleFormatError, match="missing field"):
        verify_bundle(write_container(bad_manifest, sig, {}), trusted(key))


def test_inspect_reads_without_trust(key):
    man, sig = inspect_bundle(make_bundle(SigningKey.generate()))
    assert man.model_name == "demo" and sig["signatures"][0]["keyid"] == man.key_id


# --- commands -----------------------------------------------------------------
def test_good_command(key):
    vc = verify_command(make_command(key, "a1", 5), trusted(key), "a1", time.time(), {})
    assert vc.command.counter == 5 and vc.keyid == key.keyid


def test_forged_command_refused(key):
    forged = make_command(SigningKey.generate(), "a1", 5)
    with pytest.raises(UntrustedKeyError):
        verify_command(forged, trusted(key), "a1", time.time(), {})


def test_tampered_command_refused(key):
    env = json.loads(make_command(key, "a1", 5))
    from edgeloop.agent.wire.envelope import b64d

    payload = json.loads(b64d(env["payload"], "p"))
    payload["agent_id"] = "a2"
    env["payload"] = b64e(json.dumps(payload).encode())
    with pytest.raises(SignatureError):
        verify_command(json.dumps(env).encode(), trusted(key), "a2", time.time(), {})


def test_replayed_command_refused(key):
    cmd = make_command(key, "a1", 5)
    with pytest.raises(ReplayError, match="replay"):
        verify_command(cmd, trusted(key), "a1", time.time(), {key.keyid: 5})
    with pytest.raises(ReplayError):
        verify_command(make_command(key, "a1", 4), trusted(key), "a1", time.time(), {key.keyid: 5})


def test_expired_and_future_commands_refused(key):
    now = time.time()
    with pytest.raises(ExpiredCommandError, match="expired"):
        verify_command(make_command(key, "a1", 5, now=now - 1000, ttl=60), trusted(key), "a1", now, {})
    with pytest.raises(ExpiredCommandError, match="future"):
        verify_command(make_command(key, "a1", 5, now=now + 5000), trusted(key), "a1", now, {})


def test_command_for_another_agent_refused(key):
    with pytest.raises(WrongTargetError, match="not this agent"):
        verify_command(make_command(key, "a2", 5), trusted(key), "a1", time.time(), {})


def test_unknown_command_refused(key):
    with pytest.raises(UnknownCommandError, match="unknown command 'format_disk'"):
        verify_command(make_command(key, "a1", 5, command="format_disk"), trusted(key), "a1", time.time(), {})


def test_manifest_signature_cannot_be_used_as_command(key):
    """DSSE binds the payload type: a signed manifest is not a signed command."""
    raw = read_container(make_bundle(key))
    env = json.loads(raw.signature)
    env["payload"] = b64e(raw.manifest)
    with pytest.raises(SignatureError, match="payload"):
        verify_command(json.dumps(env).encode(), trusted(key), "a1", time.time(), {})


@pytest.mark.parametrize("payload", [b"", b"{", b"[]", b'{"schema":1}', b'{"schema":1,"payload":"@@@"}'])
def test_malformed_command_envelopes(key, payload):
    with pytest.raises(MessageFormatError):
        verify_command(payload, trusted(key), "a1", time.time(), {})
