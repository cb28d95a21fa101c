"""Air-gapped delivery: a signed bundle and signed commands in one file, for devices the broker never reaches.

``edgeloop bundle export`` writes the file (:mod:`edgeloop.agent.wire.airgap`); ``edgeloop-agent
install FILE`` applies it on the device with the same checks as over MQTT. The commands are
made as for MQTT: the counter comes from the registry (``next_counter`` of the hub key, so a
later MQTT command outranks the file), each is recorded as a pending deployment that the
agent's result settles when the agent next reaches the broker, and the deploy goes through the
evaluation gate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

from edgeloop.agent.control import MAX_COMMAND_LIFETIME
from edgeloop.agent.fsutil import atomic_write_bytes
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.airgap import AirgapFile, FileCommand
from edgeloop.agent.wire.commands import Probation, seal_command
from edgeloop.agent.wire.messages import Command, TransferSpec, new_id
from edgeloop.hub.errors import HubError
from edgeloop.hub.keys import trust_material
from edgeloop.hub.services.delivery import HubDelivery

DEFAULT_EXPIRES_DAYS = 7.0  # the longest an agent accepts (MAX_COMMAND_LIFETIME)
CHUNK_SIZE = 64 * 1024  # the chunks the agent cuts the file's bundle into (as over MQTT)


class AirgapExportError(HubError):
    """An export that cannot be written as asked (no agent named, a lifetime the agents refuse)."""

    code = "airgap_export"


class HubAirgap(HubDelivery):
    def export_airgap(self, ref: str, out: Path, agent_ids: Sequence[str], *, rollback: bool = False,
                      expires_days: float = DEFAULT_EXPIRES_DAYS, reason: str = "",
                      override_reason: str | None = None, probation: Probation | None = None) -> dict:
        """Write ``out``: for each agent a signed deploy command of ``ref``'s bundle (gate-checked) plus the
        bundle, or with ``rollback`` a signed rollback command to it (the agents must still hold it).
        Counters advance and deployments are recorded as for MQTT. A deploy with ``probation`` goes on
        the agent's dead-man switch as over MQTT. Returns what was written."""
        ids = [topics.check_agent_id(a) for a in dict.fromkeys(agent_ids)]
        if not ids:
            raise AirgapExportError("name the agents the file is for with --agent ID (repeat): a signed command "
                                    "names the one agent that may act on it")
        if rollback and probation is not None:
            raise AirgapExportError("a rollback goes on no probation: drop --probation")
        if not 0 < expires_days <= MAX_COMMAND_LIFETIME / 86400:
            raise AirgapExportError(f"--expires-days must be above 0 and at most {MAX_COMMAND_LIFETIME / 86400:.0f}: "
                                    f"agents refuse commands valid longer (expiry_too_far), got {expires_days}")
        now = time.time()
        expires_at = now + expires_days * 86400
        if rollback:
            rec, bundle = self._bundle_record(ref), b""
            version = self.registry.get_version(rec["version_id"])
            args: dict = {"bundle_sha256": rec["sha256"], "reason": reason}
        else:
            version = self.version_of(ref)
            self.check_deployable(version["id"], override_reason)
            rec, bundle = self.resolve_bundle(ref)
            spec = TransferSpec(new_id(), rec["sha256"], len(bundle), CHUNK_SIZE, math.ceil(len(bundle) / CHUNK_SIZE))
            args = {"transfer": spec.to_dict(), "bundle_sha256": rec["sha256"], "model": version["model_name"],
                    "version": version["version"]}
            if probation is not None:
                args["probation"] = probation.to_dict()
        kind = "rollback" if rollback else "deploy"
        commands: list[Command] = []
        with self.registry.transaction():  # every counter and deployment row: one commit
            for aid in ids:
                cmd = Command(command=kind, command_id=new_id(), agent_id=aid,
                              counter=self.registry.next_counter(self.key.keyid), issued_at=now,
                              expires_at=expires_at, args=args)
                self.registry.add_deployment(bundle_sha256=rec["sha256"], agent_id=aid, kind=kind,
                                             command_id=cmd.command_id, counter=cmd.counter, actor=self.actor,
                                             detail="air-gapped file", expires_at=expires_at)
                commands.append(cmd)
        trust = trust_material(self.home)  # certificates, revocations, rotations (docs/security.md)
        f = AirgapFile(kind=kind, created_at=now, key_id=self.key.keyid, model=version["model_name"],
                       version=version["id"], bundle=bundle, bundle_sha256=rec["sha256"],
                       commands=[FileCommand(c.agent_id, c.command_id, seal_command(self.key, c, trust))
                                 for c in commands])
        data = f.encode()
        atomic_write_bytes(Path(out), data)
        self.registry.audit(self.actor, "airgap.export", version["id"], kind=kind, bundle_sha256=rec["sha256"],
                            agents=ids, path=str(out), expires_at=expires_at)
        return {"path": str(out), "kind": kind, "version": version["id"], "bundle_sha256": rec["sha256"],
                "size": len(data), "bundle_included": bool(bundle), "expires_at": expires_at,
                "commands": [{"agent": c.agent_id, "command_id": c.command_id, "counter": c.counter}
                             for c in commands]}
