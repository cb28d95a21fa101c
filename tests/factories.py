"""Small builders for tests: keys, manifests, bundles, commands (real crypto, no mocks)."""

from __future__ import annotations

import time

from edgeloop.agent.wire.bundle import file_entry, pack_bundle, sha256
from edgeloop.agent.wire.commands import seal_command
from edgeloop.agent.wire.envelope import SigningKey, TrustedKeys
from edgeloop.agent.wire.manifest import DriftReference, FeatureReference, Manifest, SmokeTest, TensorSpec
from edgeloop.agent.wire.messages import Command, new_id


def make_manifest(key: SigningKey, files: dict[str, bytes], *, model="demo", version="1",
                  n_features=3, labels=("a", "b"), smoke=None, drift=None) -> Manifest:
    names = [f"f{i}" for i in range(n_features)]
    return Manifest(
        model_name=model, version=version, task="classification", created_at=1.7e9,
        key_id=key.keyid, entrypoint=sorted(files)[0],
        files=[file_entry(p, d) for p, d in sorted(files.items())],
        feature_names=names,
        inputs=[TensorSpec("features", "FP32", [-1, n_features])],
        outputs=[TensorSpec("probabilities", "FP32", [-1, len(labels)])],
        labels=list(labels),
        smoke_test=smoke,
        drift=drift if drift is not None else DriftReference(
            features=[FeatureReference(n, [0.0, 1.0], [10, 10, 10], 0.5, 1.0) for n in names],
            output_labels=list(labels), output_shares=[0.5, 0.5]),
        lineage={"dataset_sha256": "ab" * 32, "run_id": "run-1"},
    )


def make_bundle(key: SigningKey, files: dict[str, bytes] | None = None, **kw) -> bytes:
    files = files or {"model.onnx": b"not really onnx but hashed all the same"}
    return pack_bundle(make_manifest(key, files, **kw), files, key)


def make_command(key: SigningKey, agent_id: str, counter: int, command="rollback", *, now=None,
                 ttl=300.0, args=None) -> bytes:
    now = time.time() if now is None else now
    cmd = Command(command=command, command_id=new_id(), agent_id=agent_id, counter=counter,
                  issued_at=now, expires_at=now + ttl, args=args if args is not None else {"bundle_sha256": "0" * 64})
    return seal_command(key, cmd)


def trusted(*keys: SigningKey) -> TrustedKeys:
    return TrustedKeys.of(k.public for k in keys)


__all__ = ["make_manifest", "make_bundle", "make_command", "trusted", "sha256", "SmokeTest"]
