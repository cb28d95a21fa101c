"""Pure verification of bundles and commands: every refusal path, no I/O."""

import io
import json
import tarfile
import time
from collections.abc import Sequence

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
from edgeloop.agent.wire.envelope import (
    COMMAND_PAYLOAD_TYPE,
    MANIFEST_PAYLOAD_TYPE,
    SigningKey,
    b64e,
    canonical_json,
    sign_detached,
)
from edgeloop.agent.wire.fields import dumps
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


@pytest.mark.reliability("bundle verification", "one byte flipped in the model file",
                         "refused hash_mismatch naming the file")
def test_flipped_byte_in_model_refused(key):
    data = make_bundle(key)
    with pytest.raises(HashMismatchError, match="model.onnx"):
        verify_bundle(_flip_in(data, b"hashed all"), trusted(key))


@pytest.mark.reliability("bundle verification", "one byte flipped in the manifest", "refused: altered")
def test_flipped_byte_in_manifest_refused(key):
    data = make_bundle(key)
    with pytest.raises(SignatureError, match="altered"):
        verify_bundle(_flip_in(data, b'"model_name":"demo"'), trusted(key))


def _unread_bytes(data: bytes) -> set[int]:
    """Offsets of the bytes no tar reader looks at, from the good bundle's own layout.

    Three kinds, all outside what the signature can cover: the last byte of each header's
    checksum field (written as six octal digits, NUL, space; readers stop at the NUL and
    sum the field as spaces), the zero padding from each entry's data to its 512-byte
    block, and the end-of-archive blocks plus record padding (reading stops at the first
    block that is not a valid header). Everything else is a header or data byte.
    """
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        members = tar.getmembers()
    unread = set()
    block_end = 0
    for member in members:
        unread.add(member.offset + 155)
        data_end = member.offset_data + member.size
        block_end = -(-data_end // 512) * 512
        unread.update(range(data_end, block_end))
    unread.update(range(block_end, len(data)))
    return unread


def _flip_outcomes(data: bytes, keys, offsets, mask: int) -> tuple[set[int], set[int]]:
    """(refused, harmless) offsets among ``offsets`` when byte ``i`` is XORed with ``mask``.

    Refused means an EdgeloopError (anything else -- KeyError, UnicodeDecodeError... -- fails the
    test); harmless means it verified to exactly the original content (anything else fails).
    """
    good = verify_bundle(data, keys)
    refused, harmless = set(), set()
    for i in offsets:
        bad = bytearray(data)
        bad[i] ^= mask
        try:
            vb = verify_bundle(bytes(bad), keys)
        except EdgeloopError:
            refused.add(i)
            continue
        assert (vb.manifest_bytes, vb.signature, vb.files, vb.keyid) == (
            good.manifest_bytes, good.signature, good.files, good.keyid), f"flip at {i} changed the content"
        harmless.add(i)
    return refused, harmless


@pytest.mark.reliability("bundle verification", "every byte of a bundle inverted in turn",
                         "every byte a reader looks at is refused; the others verify to the same content")
def test_every_single_byte_flip_is_refused(key, faults_tried):
    """Invert each byte of a bundle in turn (all of them): every header or data byte is refused
    with an EdgeloopError; only the bytes no reader looks at (``_unread_bytes``) pass, and then
    with content identical to the original."""
    data = make_bundle(key, n_features=1)  # small: 3 entries, 10 KiB with the tar record padding
    unread = _unread_bytes(data)
    assert len(members := _member_names(data)) == 3 and len(data) - len(unread) > 3 * 512, members
    refused, harmless = _flip_outcomes(data, trusted(key), range(len(data)), 0xFF)
    faults_tried(len(data))
    assert harmless == unread
    assert refused == set(range(len(data))) - unread


@pytest.mark.reliability("bundle verification", "the low bit of every header and data byte flipped in turn",
                         "every one refused")
def test_low_bit_flip_of_every_header_and_data_byte_is_refused(key, faults_tried):
    """Flipping only the low bit keeps JSON text valid (1 -> 0, a -> `, a key id digit changes...):
    every header and data byte must still be refused."""
    data = make_bundle(key, n_features=1)
    read = sorted(set(range(len(data))) - _unread_bytes(data))
    refused, harmless = _flip_outcomes(data, trusted(key), read, 0x01)
    faults_tried(len(read))
    assert harmless == set() and refused == set(read)


def _member_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return tar.getnames()


@pytest.mark.reliability("bundle verification", "a bundle cut short at 5 points", "refused (format, missing file)")
def test_truncated_bundle_refused(key, faults_tried):
    faults_tried(5)
    data = make_bundle(key)
    model_at = data.index(b"not really onnx")
    for cut in (10, 600, data.index(b'"model_name"'), model_at, model_at + 5):
        with pytest.raises((BundleFormatError, MissingFileError)):
            verify_bundle(data[:cut], trusted(key))


@pytest.mark.reliability("bundle verification", "a bundle signed by an untrusted key",
                         "refused, saying to provision the key")
def test_wrong_key_refused(key):
    other = SigningKey.generate()
    with pytest.raises(UntrustedKeyError, match="Provision"):
        verify_bundle(make_bundle(other), trusted(key))


@pytest.mark.reliability("bundle verification", "an unsigned bundle (no manifest.sig)", "refused bundle_format")
def test_missing_signature_refused(key):
    raw = read_container(make_bundle(key))
    no_sig = _tar([(_info("manifest.json"), raw.manifest), (_info("files/model.onnx"), raw.files["model.onnx"])])
    with pytest.raises(BundleFormatError, match="no manifest.sig: unsigned bundles are refused") as err:
        verify_bundle(no_sig, trusted(key))
    assert err.value.code == "bundle_format"


@pytest.mark.reliability("bundle verification", "no manifest.json; an empty tar", "refused bundle_format")
def test_missing_manifest_refused(key, faults_tried):
    faults_tried(2)
    raw = read_container(make_bundle(key))
    no_manifest = _tar([(_info("manifest.sig"), raw.signature), (_info("files/model.onnx"), raw.files["model.onnx"])])
    with pytest.raises(BundleFormatError, match="no manifest.json: not an edgeloop bundle") as err:
        verify_bundle(no_manifest, trusted(key))
    assert err.value.code == "bundle_format"
    with pytest.raises(BundleFormatError, match="no manifest.json"):
        verify_bundle(_tar([]), trusted(key))  # an empty (but well-formed) tar


@pytest.mark.reliability("bundle verification", "an extra file, a missing file, a file one byte short",
                         "refused naming the file")
def test_unexpected_missing_and_short_files(key, faults_tried):
    faults_tried(3)
    raw = read_container(make_bundle(key))
    extra = write_container(raw.manifest, raw.signature, {**raw.files, "evil.sh": b"rm -rf /"})
    with pytest.raises(UnexpectedFileError, match="evil.sh"):
        verify_bundle(extra, trusted(key))
    missing = write_container(raw.manifest, raw.signature, {})
    with pytest.raises(MissingFileError):
        verify_bundle(missing, trusted(key))
    short = write_container(raw.manifest, raw.signature, {"model.onnx": raw.files["model.onnx"][:-1]})
    with pytest.raises(SizeMismatchError):
        verify_bundle(short, trusted(key))


@pytest.mark.reliability("bundle verification", "a tar entry ../escape", "refused: it would leave the bundle")
def test_path_traversal_entry_refused(key):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(BundleFormatError, match="leave the bundle"):
        verify_bundle(buf.getvalue(), trusted(key))


def _info(name: str, type_: bytes = tarfile.REGTYPE, size: int = 0, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = type_, size, linkname
    return info


def _tar(entries: Sequence[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A tar of exactly these entries (sizes of regular files follow their data)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, blob in entries:
            if blob is not None:
                info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob) if blob is not None else None)
    return buf.getvalue()


def _signed_parts(key):
    raw = read_container(make_bundle(key))
    return [(_info("manifest.json"), raw.manifest), (_info("manifest.sig"), raw.signature)]


@pytest.mark.parametrize("kind,entry", [
    ("symbolic link", _info("files/model.onnx", tarfile.SYMTYPE, linkname="/etc/passwd")),
    ("hard link", _info("files/model.onnx", tarfile.LNKTYPE, linkname="manifest.json")),
    ("directory", _info("files/sub", tarfile.DIRTYPE)),
    ("fifo", _info("files/pipe", tarfile.FIFOTYPE)),
    ("character device", _info("files/null", tarfile.CHRTYPE)),
], ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.reliability("bundle verification", "a symlink, hard link, directory, fifo or device entry",
                         "refused by type before anything is read")
def test_non_regular_entries_refused(key, kind, entry):
    """Links, directories and devices are refused by type, whatever they point at, before anything is read."""
    data = _tar([*_signed_parts(key), (entry, None)])
    with pytest.raises(BundleFormatError, match=f"is a {kind}, not a regular file") as err:
        verify_bundle(data, trusted(key))
    assert err.value.code == "bundle_format"


@pytest.mark.parametrize("name", ["files/model.onnx", "manifest.json", "manifest.sig"])
@pytest.mark.reliability("bundle verification", "an entry name twice (model, manifest or signature)",
                         "refused bundle_format")
def test_duplicate_entry_refused(key, name):
    """A name twice is ambiguous (tar readers disagree on which copy wins): refused, even with equal bytes."""
    raw = read_container(make_bundle(key))
    parts = {"manifest.json": raw.manifest, "manifest.sig": raw.signature, "files/model.onnx": raw.files["model.onnx"]}
    entries = [(_info(n), blob) for n, blob in parts.items()] + [(_info(name), parts[name])]
    with pytest.raises(BundleFormatError, match=f"holds '{name}' twice") as err:
        verify_bundle(_tar(entries), trusted(key))
    assert err.value.code == "bundle_format"


@pytest.mark.reliability("bundle verification", "both keys trusted, the manifest names one, the other signed it",
                         "refused bad_signature")
def test_signer_other_than_the_manifests_key_refused(key):
    """Both keys trusted, but the manifest names one and the other signed it."""
    other = SigningKey.generate()
    files = {"model.onnx": b"weights"}
    manifest = make_manifest(key, files).to_bytes()  # names ``key``
    sig = dumps(sign_detached(other, MANIFEST_PAYLOAD_TYPE, manifest))
    with pytest.raises(SignatureError, match=f"signed by {key.keyid} but {other.keyid} signed it") as err:
        verify_bundle(write_container(manifest, sig, files), trusted(key, other))
    assert err.value.code == "bad_signature"


@pytest.mark.parametrize("signature,match", [
    (b"{", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[]", "must be a JSON object"),
    (b'{"schema":1,"payload_type":"application/vnd.edgeloop.manifest+json"}', "'signatures' must be a list"),
    (b'{"schema":2,"payload_type":"x","signatures":[]}', "schema 2 is not supported"),
    (b'{"schema":1,"payload_type":"application/vnd.edgeloop.manifest+json","signatures":[{"keyid":"k"}]}',
     r"signatures\[0\]\.sig must be a base64 string"),
], ids=["truncated", "binary", "array", "no-signatures", "future-schema", "no-sig"])
@pytest.mark.reliability("bundle verification",
                         "a malformed manifest.sig (truncated, binary, array, no signatures, future schema, no sig)",
                         "refused bad_signature")
def test_malformed_signature_document_refused(key, signature, match):
    raw = read_container(make_bundle(key))
    with pytest.raises(SignatureError, match=match) as err:
        verify_bundle(write_container(raw.manifest, signature, raw.files), trusted(key))
    assert str(err.value).startswith("manifest.sig is not a valid signature document")
    assert err.value.code == "bad_signature"


@pytest.mark.reliability("bundle verification", "a manifest.sig with an empty signature list", "refused")
def test_empty_signature_list_refused(key):
    raw = read_container(make_bundle(key))
    sig = dumps({"schema": 1, "payload_type": MANIFEST_PAYLOAD_TYPE, "signatures": []})
    with pytest.raises(SignatureError, match="no signatures"):
        verify_bundle(write_container(raw.manifest, sig, raw.files), trusted(key))


@pytest.mark.reliability("bundle verification", "a signed command (as is, and relabelled) as the manifest signature",
                         "refused bad_signature")
def test_signed_command_is_not_a_manifest_signature(key, faults_tried):
    """DSSE binds the payload type: a command envelope from the same key does not sign a manifest,
    neither as it is nor relabelled as a manifest signature."""
    faults_tried(2)
    raw = read_container(make_bundle(key))
    command = make_command(key, "a1", 5)
    with pytest.raises(SignatureError, match="command\\+json' payload where .*manifest\\+json' was expected") as err:
        verify_bundle(write_container(raw.manifest, command, raw.files), trusted(key))
    assert err.value.code == "bad_signature"
    # the same key's signature over the manifest bytes, but made for the command payload type
    as_command = sign_detached(key, COMMAND_PAYLOAD_TYPE, raw.manifest)
    relabelled = dumps({**as_command, "payload_type": MANIFEST_PAYLOAD_TYPE})
    with pytest.raises(SignatureError, match="does not match the signed data"):
        verify_bundle(write_container(raw.manifest, relabelled, raw.files), trusted(key))


@pytest.mark.reliability("bundle verification", "a bundle over the size cap", "refused bundle_too_large")
def test_size_cap(key):
    data = make_bundle(key)
    with pytest.raises(BundleTooLargeError, match="accepts at most 100") as err:
        verify_bundle(data, trusted(key), max_size=100)
    assert err.value.code == "bundle_too_large"
    assert verify_bundle(data, trusted(key), max_size=len(data)).keyid == key.keyid  # the cap itself is allowed


@pytest.mark.reliability("bundle verification", "a tar header declaring more content than the archive holds",
                         "refused bundle_too_large before reading")
def test_declared_content_over_the_cap_refused_before_reading(key):
    """A header may claim more content than the archive holds: the total of the declared
    sizes is capped before any entry is read."""
    data = bytearray(make_bundle(key))
    model_header = data.index(b"files/model.onnx")
    _set_size(data, model_header, len(data))  # manifest + signature + this > the archive's own size
    with pytest.raises(BundleTooLargeError, match="content exceeds") as err:
        verify_bundle(bytes(data), trusted(key), max_size=len(data))
    assert err.value.code == "bundle_too_large"


def _set_size(data: bytearray, header: int, size: int) -> None:
    """Rewrite the size field of the tar header at ``header`` and fix its checksum."""
    data[header + 124:header + 136] = b"%011o\0" % size
    data[header + 148:header + 156] = b" " * 8
    data[header + 148:header + 156] = b"%06o\0 " % sum(data[header:header + 512])


@pytest.mark.reliability("bundle verification", "a validly signed manifest with missing fields",
                         "refused bundle_format")
def test_manifest_signed_but_invalid_is_refused(key):
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


@pytest.mark.reliability("signed commands", "a command signed by an untrusted key", "refused: untrusted key")
def test_forged_command_refused(key):
    forged = make_command(SigningKey.generate(), "a1", 5)
    with pytest.raises(UntrustedKeyError):
        verify_command(forged, trusted(key), "a1", time.time(), {})


@pytest.mark.reliability("signed commands", "a signed command with its target agent changed", "refused: bad signature")
def test_tampered_command_refused(key):
    env = json.loads(make_command(key, "a1", 5))
    from edgeloop.agent.wire.envelope import b64d

    payload = json.loads(b64d(env["payload"], "p"))
    payload["agent_id"] = "a2"
    env["payload"] = b64e(json.dumps(payload).encode())
    with pytest.raises(SignatureError):
        verify_command(json.dumps(env).encode(), trusted(key), "a2", time.time(), {})


@pytest.mark.reliability("signed commands", "a command replayed, and one with an older counter", "refused: replay")
def test_replayed_command_refused(key, faults_tried):
    faults_tried(2)
    cmd = make_command(key, "a1", 5)
    with pytest.raises(ReplayError, match="replay"):
        verify_command(cmd, trusted(key), "a1", time.time(), {key.keyid: 5})
    with pytest.raises(ReplayError):
        verify_command(make_command(key, "a1", 4), trusted(key), "a1", time.time(), {key.keyid: 5})


@pytest.mark.reliability("signed commands", "an expired command and one dated in the future",
                         "refused: expired / future")
def test_expired_and_future_commands_refused(key, faults_tried):
    faults_tried(2)
    now = time.time()
    with pytest.raises(ExpiredCommandError, match="expired"):
        verify_command(make_command(key, "a1", 5, now=now - 1000, ttl=60), trusted(key), "a1", now, {})
    with pytest.raises(ExpiredCommandError, match="future"):
        verify_command(make_command(key, "a1", 5, now=now + 5000), trusted(key), "a1", now, {})


@pytest.mark.reliability("signed commands", "a command for another agent", "refused: wrong target")
def test_command_for_another_agent_refused(key):
    with pytest.raises(WrongTargetError, match="not this agent"):
        verify_command(make_command(key, "a2", 5), trusted(key), "a1", time.time(), {})


@pytest.mark.reliability("signed commands", "a validly signed unknown command (format_disk)",
                         "refused: unknown command")
def test_unknown_command_refused(key):
    with pytest.raises(UnknownCommandError, match="unknown command 'format_disk'"):
        verify_command(make_command(key, "a1", 5, command="format_disk"), trusted(key), "a1", time.time(), {})


@pytest.mark.reliability("signed commands", "a signed manifest sent as a command", "refused: wrong payload type")
def test_manifest_signature_cannot_be_used_as_command(key):
    """DSSE binds the payload type: a signed manifest is not a signed command."""
    raw = read_container(make_bundle(key))
    env = json.loads(raw.signature)
    env["payload"] = b64e(raw.manifest)
    with pytest.raises(SignatureError, match="payload"):
        verify_command(json.dumps(env).encode(), trusted(key), "a1", time.time(), {})


@pytest.mark.parametrize("payload", [b"", b"{", b"[]", b'{"schema":1}', b'{"schema":1,"payload":"@@@"}'])
@pytest.mark.reliability("signed commands",
                         "a malformed command envelope (empty, truncated, array, no payload, bad base64)",
                         "refused: bad message")
def test_malformed_command_envelopes(key, payload):
    with pytest.raises(MessageFormatError):
        verify_command(payload, trusted(key), "a1", time.time(), {})
