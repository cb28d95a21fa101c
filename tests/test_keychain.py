"""The keychain (agent/wire/keychain.py, pure), its persistence (agent/trust_store.py) and the hub's root,
certificates, revocations and rotation (hub/keys.py): real Ed25519 keys, real files."""

from __future__ import annotations

import json
import os
import stat

import pytest

from edgeloop.agent.errors import KeyFileError, SignatureError, UntrustedKeyError
from edgeloop.agent.trust_store import AgentTrust
from edgeloop.agent.wire.commands import seal_command, verify_command
from edgeloop.agent.wire.envelope import SigningKey, TrustedKeys, raw_public_key, seal
from edgeloop.agent.wire.fields import dumps
from edgeloop.agent.wire.keychain import (
    CERTIFICATE_PAYLOAD_TYPE,
    CertificateExpiredError,
    Keychain,
    KeyNotCertifiedError,
    KeyRetiredError,
    KeyRevokedError,
    sign_certificate,
    sign_revocations,
    sign_rotation,
    trust_document,
)
from edgeloop.agent.wire.messages import Command
from edgeloop.hub import keys as hub_keys

NOW = 1_800_000_000.0
DAY = 86400.0


@pytest.fixture(scope="module")
def k():
    """Keys: a root, another root, hub keys a/b/c."""
    return {n: SigningKey.generate() for n in ("root", "root2", "a", "b", "c")}


def chain(k, keys=(), roots=("root",)) -> Keychain:
    return Keychain.of(TrustedKeys.of(k[n].public for n in keys), TrustedKeys.of(k[n].public for n in roots))


def cert(k, who, root="root", serial=1, start=NOW - DAY, days=30.0):
    return sign_certificate(k[root], k[who].public, serial, start, start + days * DAY)


def learn(ch, now=NOW, **items):
    out, notes = ch.learn(trust_document(**items), now)
    return out, notes


# --- certificates ------------------------------------------------------------------------------------------------
@pytest.mark.reliability("key trust", "a command signed by a hub key without a root certificate, agent trusts a root",
                         "refused: key_not_certified")
def test_root_only_needs_a_certificate(k):
    ch = chain(k)
    with pytest.raises(KeyNotCertifiedError, match="edgeloop keys certify"):
        ch.for_commands([k["a"].keyid], NOW)
    ch, notes = learn(ch, certificates=[cert(k, "a")])
    assert "taken" in notes[0]
    assert list(ch.for_commands([k["a"].keyid], NOW).keys) == [k["a"].keyid]
    assert k["a"].keyid in ch.trusted_keyids(NOW) and k["root"].keyid in ch.trusted_keyids(NOW)


@pytest.mark.reliability("key trust", "a certificate signed by a key that is not a trusted root",
                         "ignored; the hub key stays key_not_certified")
def test_certificate_from_another_root_is_ignored(k):
    ch, notes = learn(chain(k), certificates=[cert(k, "a", root="root2"), cert(k, "a", root="b")])
    assert all("ignored" in n for n in notes) and len(notes) == 2
    with pytest.raises(KeyNotCertifiedError):
        ch.for_commands([k["a"].keyid], NOW)


@pytest.mark.reliability("key trust", "a command signed by a key whose certificate expired (or is not valid yet)",
                         "refused: certificate_expired; its bundles still verify")
def test_expired_and_future_certificates(k):
    ch, _ = learn(chain(k), certificates=[cert(k, "a", days=1), cert(k, "b", start=NOW + 2 * DAY)])
    with pytest.raises(CertificateExpiredError, match="expired"):
        ch.for_commands([k["a"].keyid], NOW + 3 * DAY)
    with pytest.raises(CertificateExpiredError, match="not valid before"):
        ch.for_commands([k["b"].keyid], NOW)
    assert k["a"].keyid in ch.for_bundles([k["a"].keyid]).keys  # a stored bundle keeps verifying
    assert ch.for_commands([k["a"].keyid], NOW).keys  # within its validity


def test_newer_certificate_replaces_older_not_the_reverse(k):
    ch, _ = learn(chain(k), certificates=[cert(k, "a", serial=2, days=60)])
    ch2, notes = learn(ch, certificates=[cert(k, "a", serial=1, days=1)])
    assert ch2 == ch and notes == []
    ch.for_commands([k["a"].keyid], NOW + 30 * DAY)
    assert len(ch.statements()["certificates"]) == 1


def test_certificate_with_a_mismatched_key_id_is_ignored(k):
    doc = {"schema": 1, "kind": "key_certificate", "key": raw_public_key(k["a"].public), "key_id": k["b"].keyid,
           "root": k["root"].keyid, "serial": 1, "not_before": NOW - DAY, "not_after": NOW + DAY}
    forged = seal(k["root"], CERTIFICATE_PAYLOAD_TYPE, dumps(doc))  # signed by the root, but names another key id
    ch, notes = learn(chain(k), certificates=[forged])
    assert "ignored" in notes[0] and not ch.certificates


# --- revocation ------------------------------------------------------------------------------------------------
@pytest.mark.reliability("key trust", "a command and a bundle signed by a key the root revoked",
                         "refused: key_revoked, even with a valid certificate or in trusted_keys")
def test_revoked_key_refused_for_commands_and_bundles(k):
    ch, _ = learn(chain(k, keys=("b",)), certificates=[cert(k, "a")],
                  revocations=[sign_revocations(k["root"], 1, {k["a"].keyid: "stolen", k["b"].keyid: ""}, NOW)])
    for keyid in (k["a"].keyid, k["b"].keyid):
        with pytest.raises(KeyRevokedError, match="revoked by root"):
            ch.for_commands([keyid], NOW)
        with pytest.raises(KeyRevokedError):
            ch.for_bundles([keyid])
    assert k["a"].keyid not in ch.trusted_keyids(NOW)


@pytest.mark.reliability("key trust",
                         "an older revocation list (lower serial) or one signed by a non-root key replayed",
                         "ignored: the newest root list stays")
def test_revocation_lists_only_move_forward(k):
    new = sign_revocations(k["root"], 5, {k["a"].keyid: "stolen"}, NOW)
    ch, _ = learn(chain(k), certificates=[cert(k, "a")], revocations=[new])
    old = sign_revocations(k["root"], 4, {}, NOW - DAY)
    same_serial = sign_revocations(k["root"], 5, {}, NOW)
    by_hub_key = sign_revocations(k["a"], 9, {}, NOW)
    ch2, notes = learn(ch, revocations=[old, same_serial, by_hub_key])
    assert ch2.revocations == ch.revocations
    assert any("differs" in n for n in notes) and any("ignored" in n for n in notes)
    with pytest.raises(KeyRevokedError):
        ch2.for_commands([k["a"].keyid], NOW)
    ch3, _ = learn(ch, revocations=[sign_revocations(k["root"], 6, {}, NOW)])  # un-revoked by a newer list
    assert ch3.for_commands([k["a"].keyid], NOW).keys
    assert len(ch3.statements()["revocations"]) == 1


# --- rotation --------------------------------------------------------------------------------------------------
@pytest.mark.reliability("key trust", "a command signed by a rotated-out hub key after its grace period",
                         "refused: key_retired; the new key accepted; old bundles still verify")
def test_rotation_adds_the_new_key_and_ends_the_old_after_grace(k):
    ch = chain(k, keys=("a",), roots=())
    with pytest.raises(UntrustedKeyError) as e:
        ch.for_commands([k["b"].keyid], NOW)
    assert e.value.code == "untrusted_key"
    ch, notes = learn(ch, rotations=[sign_rotation(k["a"], k["b"].public, NOW + DAY, NOW)])
    assert "rotated" in notes[0]
    assert ch.for_commands([k["b"].keyid], NOW).keys and ch.for_commands([k["a"].keyid], NOW + DAY - 1).keys
    with pytest.raises(KeyRetiredError, match="grace period ended"):
        ch.for_commands([k["a"].keyid], NOW + DAY + 1)
    assert ch.for_bundles([k["a"].keyid]).keys
    assert ch.trusted_keyids(NOW + 2 * DAY) == [k["b"].keyid]


@pytest.mark.reliability("key trust",
                         "a rotation statement signed by an untrusted key, or a second rotation of one key",
                         "ignored: no key is added")
def test_forged_and_second_rotations_are_ignored(k):
    ch = chain(k, keys=("a",), roots=())
    ch2, notes = learn(ch, rotations=[sign_rotation(k["c"], k["b"].public, NOW + DAY, NOW)])
    assert ch2 == ch and "ignored" in notes[0]
    ch, _ = learn(ch, rotations=[sign_rotation(k["a"], k["b"].public, NOW + DAY, NOW)])
    ch3, notes = learn(ch, rotations=[sign_rotation(k["a"], k["c"].public, NOW + 9 * DAY, NOW)])
    assert ch3 == ch and "already rotated" in notes[0]
    with pytest.raises(UntrustedKeyError):
        ch3.for_commands([k["c"].keyid], NOW)


def test_rotation_chain_is_followed_in_one_document(k):
    rots = [sign_rotation(k["a"], k["b"].public, NOW + DAY, NOW),
            sign_rotation(k["b"], k["c"].public, NOW + 5 * DAY, NOW)]
    ch, _ = learn(chain(k, keys=("a",), roots=()), now=NOW + 3 * DAY, rotations=rots)  # an agent away for days
    assert ch.for_commands([k["c"].keyid], NOW + 3 * DAY).keys
    with pytest.raises(KeyRetiredError):
        ch.for_commands([k["a"].keyid], NOW + 3 * DAY)


def test_a_certified_keys_successor_needs_its_own_certificate(k):
    ch, _ = learn(chain(k), certificates=[cert(k, "a")],
                  rotations=[sign_rotation(k["a"], k["b"].public, NOW + DAY, NOW)])
    with pytest.raises(KeyNotCertifiedError):
        ch.for_commands([k["b"].keyid], NOW)
    with pytest.raises(KeyRetiredError):  # but the old key ends with its grace period
        ch.for_commands([k["a"].keyid], NOW + 2 * DAY)
    ch, _ = learn(ch, certificates=[cert(k, "b", serial=2)])
    assert ch.for_commands([k["b"].keyid], NOW).keys


# --- robustness, persistence ------------------------------------------------------------------------------------
@pytest.mark.reliability("key trust", "malformed trust documents (wrong types, garbage statements, 1000 items)",
                         "ignored item by item, never raises")
def test_garbage_trust_documents_never_raise(k, faults_tried):
    ch = chain(k, keys=("a",))
    bad_docs = [[], "x", 3, {"certificates": "x"}, {"revocations": [1, "a", None, {}, {"schema": 1}]},
                {"rotations": [{"schema": 1, "payload_type": "x", "signatures": [{"keyid": 5}], "payload": "!!"}]},
                {"certificates": [cert(k, "a")] * 1000}]
    for doc in bad_docs:
        out, _ = ch.learn(doc, NOW)
        assert out.for_commands([k["a"].keyid], NOW).keys
    faults_tried(len(bad_docs))
    assert len(ch.learn(bad_docs[-1], NOW)[0].statements()["certificates"]) == 1


def test_statements_rebuild_the_same_keychain(k):
    ch, _ = learn(chain(k, keys=("a",)), certificates=[cert(k, "c")],
                  revocations=[sign_revocations(k["root"], 2, {k["b"].keyid: "x"}, NOW)],
                  rotations=[sign_rotation(k["a"], k["b"].public, NOW + DAY, NOW)])
    again, _ = chain(k, keys=("a",)).learn(json.loads(json.dumps(ch.statements())), NOW + 9 * DAY)
    assert (again.certificates, again.revocations, again.learned, again.retired) == \
        (ch.certificates, ch.revocations, ch.learned, ch.retired)


def _command(counter=1, agent="edge-1"):
    return Command(command="rollback", command_id=f"c{counter}", agent_id=agent, counter=counter, issued_at=NOW,
                   expires_at=NOW + 60, args={"bundle_sha256": "0" * 64})


def test_agent_trust_persists_and_survives_restart(k, tmp_path):
    clock = lambda: NOW
    trust = AgentTrust(TrustedKeys({}), TrustedKeys.of([k["root"].public]), tmp_path, clock)
    doc = trust_document([cert(k, "a")], [sign_revocations(k["root"], 3, {k["b"].keyid: "x"}, NOW)])
    env = seal_command(k["a"], _command(), doc)
    assert trust.verify_command(env, "edge-1", NOW, {}).keyid == k["a"].keyid
    assert json.loads((tmp_path / "trust.json").read_text())["certificates"]
    again = AgentTrust(TrustedKeys({}), TrustedKeys.of([k["root"].public]), tmp_path, clock)
    assert again.verify_command(seal_command(k["a"], _command(2)), "edge-1", NOW, {}).command.counter == 2
    again.learn(trust_document(revocations=[sign_revocations(k["root"], 2, {}, NOW)]))  # older: ignored
    with pytest.raises(KeyRevokedError):
        AgentTrust(TrustedKeys({}), TrustedKeys.of([k["root"].public]), tmp_path, clock).verify_command(
            seal_command(k["b"], _command(3)), "edge-1", NOW, {})


@pytest.mark.reliability("key trust", "the agent's trust.json damaged on disk", "started from the configured keys "
                         "and roots; the hub's next command brings the statements again")
def test_damaged_trust_file_falls_back_to_config(k, tmp_path):
    (tmp_path / "trust.json").write_text("{not json")
    trust = AgentTrust(TrustedKeys.of([k["a"].public]), TrustedKeys({}), tmp_path, lambda: NOW)
    assert trust.verify_command(seal_command(k["a"], _command()), "edge-1", NOW, {}).keyid == k["a"].keyid


def test_older_verifiers_ignore_the_trust_field(k):
    env = seal_command(k["a"], _command(), trust_document([cert(k, "a")]))
    assert verify_command(env, TrustedKeys.of([k["a"].public]), "edge-1", NOW, {}).keyid == k["a"].keyid
    with pytest.raises(SignatureError):  # the trust field is not part of what is signed, and cannot vouch for b
        verify_command(seal_command(k["b"], _command(), trust_document([cert(k, "b")])),
                       TrustedKeys.of([k["a"].public]), "edge-1", NOW, {})


# --- the hub side ------------------------------------------------------------------------------------------------
def test_hub_root_certify_revoke_rotate(tmp_path):
    home, root_file = tmp_path / "home", tmp_path / "usb" / "root.pem"
    root_file.parent.mkdir()
    assert hub_keys.root_public_pem(home) is None and hub_keys.trust_material(home) is None
    root = hub_keys.create_root_key(root_file)
    assert stat.S_IMODE(os.stat(root_file).st_mode) == 0o600
    with pytest.raises(KeyFileError, match="never overwrites"):
        hub_keys.create_root_key(root_file)
    first = hub_keys.load_or_create_hub_key(home)
    c = hub_keys.certify(home, hub_keys.load_root_key(root_file), days=10, now=NOW)
    assert c["key_id"] == first.keyid and hub_keys.root_public_pem(home) == root.public_pem()
    assert hub_keys.root_keyids(home) == [root.keyid]
    with pytest.raises(KeyFileError, match="this hub's root is"):
        hub_keys.certify(home, SigningKey.generate(), now=NOW)
    r = hub_keys.rotate(home, grace_days=1, now=NOW)
    new = hub_keys.load_or_create_hub_key(home)
    assert r["old_key_id"] == first.keyid and r["new_key_id"] == new.keyid != first.keyid
    assert (home / "keys" / "retired" / f"{first.keyid}.pub.pem").exists()
    assert first.private_pem() not in b"".join(p.read_bytes() for p in (home / "keys").rglob("*") if p.is_file())
    hub_keys.certify(home, root, now=NOW)
    hub_keys.revoke(home, root, first.keyid, "rotated out", now=NOW)
    out = hub_keys.revoke(home, root, "00" * 8, now=NOW)
    assert out["serial"] == 2 and out["revoked"] == sorted([first.keyid, "00" * 8])
    ch, notes = Keychain.of(TrustedKeys({}), TrustedKeys.of([root.public])).learn(hub_keys.trust_material(home), NOW)
    assert ch.for_commands([new.keyid], NOW).keys
    with pytest.raises(KeyRevokedError):
        ch.for_commands([first.keyid], NOW)
    assert len(ch.revocations[root.keyid].revoked) == 2


@pytest.mark.reliability("key trust", "the hub crashes in `keys rotate` after saving the rotation statement, before "
                         "switching keys", "the next rotate finishes that rotation (one statement, the key it names)")
def test_interrupted_rotation_is_finished_not_repeated(tmp_path, monkeypatch):
    home = tmp_path / "home"
    old = hub_keys.load_or_create_hub_key(home)

    real_replace = os.replace

    def crash(src, dst):  # the power goes just before the new key takes the old one's place
        if str(src).endswith(".rotating"):
            raise OSError("power cut")
        real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(hub_keys.os, "replace", crash)
        with pytest.raises(OSError):
            hub_keys.rotate(home, grace_days=1, now=NOW)
    assert hub_keys.load_or_create_hub_key(home).keyid == old.keyid  # not switched yet
    out = hub_keys.rotate(home, grace_days=1, now=NOW)
    rotations = hub_keys.load_trust_state(home)["rotations"]
    assert len(rotations) == 1 and out["new_key_id"] == hub_keys.load_or_create_hub_key(home).keyid
    ch, _ = Keychain.of(TrustedKeys.of([old.public])).learn(hub_keys.trust_material(home), NOW)
    assert ch.for_commands([out["new_key_id"]], NOW).keys
