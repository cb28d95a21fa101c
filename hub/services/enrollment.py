"""Enrolling an agent in one step, the agents' report keys and their tags, from the hub.

:meth:`HubEnrollment.enroll_agent` writes a folder to copy onto the device: ``agent.toml``
(agent id, broker and credentials, trusted keys, tags), the hub's public key (and the offline
root's, where the hub has one), the agent's own Ed25519 key pair -- generated here and pinned in
the registry at once, so no message on the broker can ever choose the key its reports are
checked with -- and, given the folder ``packaging/mosquitto/make-broker-config.sh`` wrote, the
agent's broker account (its password hashed into that folder's password file with
``mosquitto_passwd``; the shipped ACL already covers every agent by ``%u``). See
docs/operator-guide.md, "Enrolling an agent", and docs/security.md.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from edgeloop.agent.config import AGENT_KEY_FILE, AgentConfig
from edgeloop.agent.connection import TlsSettings, parse_url
from edgeloop.agent.errors import MessageFormatError
from edgeloop.agent.fsutil import atomic_write_bytes
from edgeloop.agent.wire.envelope import SigningKey
from edgeloop.agent.wire.messages import check_tags
from edgeloop.agent.wire.topics import check_agent_id
from edgeloop.hub import keys as hub_keys
from edgeloop.hub.errors import FleetError
from edgeloop.hub.services.agents import AgentKeyError, HubAgents

if TYPE_CHECKING:
    from edgeloop.hub.fleet import Fleet

CONFIG_FILE = "agent.toml"
HUB_KEY_FILE = "hub_ed25519.pub.pem"
ROOT_KEY_FILE = "hub_root.pub.pem"
PASSWORD_FILE = "mqtt-password"
CA_FILE = "broker-ca.pem"


class EnrollmentError(FleetError):
    """An agent cannot be enrolled as asked (the message says what to change)."""

    code = "enrollment"


def parse_tags(items: Iterable[str], what: str = "--tag") -> dict[str, str]:
    """``["site=plant-a", "hw=pi5"]`` -> ``{"site": "plant-a", "hw": "pi5"}``, checked."""
    tags: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise EnrollmentError(f"{what} {item!r} is not name=value (for example {what} site=plant-a)")
        tags[name.strip()] = value.strip()
    return checked_tags(tags)


def checked_tags(tags: Mapping[str, str]) -> dict[str, str]:
    try:
        return check_tags(dict(tags))
    except MessageFormatError as exc:
        raise EnrollmentError(str(exc)) from None


class HubEnrollment(HubAgents):
    def enroll_agent(self, agent_id: str, out: Path | str, *, broker: str, tags: Mapping[str, str] | None = None,
                     broker_config: Path | str | None = None, http_port: int = 8080, state_dir: str = "state",
                     replace: bool = False) -> dict:
        """Write the folder ``out`` an agent runs from and pin its key (see the module docstring).

        ``broker``: ``mqtt(s)://[user@]host[:port]`` as the *device* reaches it (no password: one is
        generated with ``broker_config``, else the agent reads ``$EDGELOOP_MQTT_PASSWORD``).
        ``state_dir``: relative paths are taken from ``out`` where the agent runs. Refuses a folder
        that holds an agent key already, and an id with a pinned key unless ``replace`` (then the
        new key is pinned and, with ``broker_config``, a new password made). Returns
        ``{"agent_id", "out", "config", "keyid", "broker_user", "broker_account", "tags", "files", "next_steps"}``.
        """
        check_agent_id(agent_id)
        tags = checked_tags(tags or {})
        out = Path(out).resolve()
        scheme, url_user, url_password, host, port = parse_url(broker)
        if url_password is not None:
            raise EnrollmentError("give --broker without a password: enrollment writes the agent's password file "
                                  "(with --broker-config), or set $EDGELOOP_MQTT_PASSWORD on the device")
        if (out / AGENT_KEY_FILE).exists():
            raise EnrollmentError(f"{out} already holds an agent key ({AGENT_KEY_FILE}); enrollment never overwrites "
                                  "one: choose another --out folder, or remove that folder if it is no longer used")
        pinned = self.registry.get_agent_key(agent_id)
        if pinned is not None and not replace:
            raise AgentKeyError(f"agent {agent_id} is enrolled already (report key {pinned['keyid']}, "
                                f"{pinned['source']}); to enroll it again (a reinstalled device), pass --replace: "
                                "the old key's reports are refused from then on")
        account = _BrokerAccount(Path(broker_config), agent_id) if broker_config is not None else None
        user = url_user or (agent_id if account is not None else None)
        if account is not None and user != agent_id:
            raise EnrollmentError(f"the broker's ACL gives an agent its topics by user name: the agent must log in as "
                                  f"{agent_id!r}, not {user!r}; drop the user name from --broker")
        if account is not None:
            account.check()
        if not 0 <= http_port < 65536:
            raise EnrollmentError(f"--http-port must be within 0..65535, got {http_port}")

        if not out.exists():
            out.mkdir(mode=0o700, parents=True)  # owner only: it will hold the agent's private key
        key = SigningKey.generate()
        written = [_write_new(out / AGENT_KEY_FILE, key.private_pem(), 0o600),
                   _write_new(out / "agent_key.pub.pem", key.public_pem(), 0o644)]
        try:
            atomic_write_bytes(out / HUB_KEY_FILE, self.key.public_pem(), mode=0o644)
            roots = []
            root = hub_keys.root_public_pem(self.home)
            if root is not None:
                atomic_write_bytes(out / ROOT_KEY_FILE, root, mode=0o644)
                roots.append(Path(ROOT_KEY_FILE))
            password_file = None
            tls = TlsSettings() if scheme in ("mqtts", "ssl") else None
            if account is not None:
                atomic_write_bytes(out / PASSWORD_FILE, (account.password(new=replace) + "\n").encode(), mode=0o600)
                password_file = Path(PASSWORD_FILE)
                if tls is not None and account.ca.is_file():
                    shutil.copyfile(account.ca, out / CA_FILE)
                    tls = TlsSettings(ca_file=Path(CA_FILE))
            cfg = AgentConfig(agent_id=agent_id, state_dir=Path(state_dir), trusted_keys=[Path(HUB_KEY_FILE)],
                              mqtt_host=host, mqtt_port=port, mqtt_username=user, mqtt_password_file=password_file,
                              mqtt_tls=tls, topic_root=self.config.topic_root, http_port=http_port,
                              agent_key=Path(AGENT_KEY_FILE), tags=tags, trusted_roots=roots)
            atomic_write_bytes(out / CONFIG_FILE, cfg.to_toml().encode(), mode=0o600)
            loaded = AgentConfig.load(out / CONFIG_FILE)  # what the agent will read, checked now
            if loaded.load_agent_key().keyid != key.keyid:
                raise EnrollmentError(f"{out / CONFIG_FILE} does not name the key just made; report this as a bug")
            if account is not None:
                account.add()
            pin = self.pin_agent_key(agent_id, key.public_pem(), replace=replace)
        except BaseException:
            for path in written:  # no half-enrolled key left to refuse the next try
                path.unlink(missing_ok=True)
            raise
        self.audit("agent.enrolled", agent_id, keyid=pin["keyid"], tags=tags, broker=f"{scheme}://{host}:{port}",
                   broker_account=account is not None, replaced=pinned is not None)
        config = out / CONFIG_FILE
        steps = [f"copy {out} to the device (keep it private: it holds the agent's key"
                 + (" and broker password" if account is not None else "") + ")",
                 f"on the device: edgeloop-agent run --config {out.name}/{CONFIG_FILE} "
                 f"(or: edgeloop agent run --config {config})"]
        if account is not None:
            steps.insert(1, f"reload the broker so it reads the new password: kill -HUP $(pidof mosquitto) "
                            f"(or systemctl reload mosquitto); {account.folder}/passwords/{agent_id} holds it")
        elif user is None:
            steps.insert(1, "give the agent its broker password: set $EDGELOOP_MQTT_PASSWORD on the device, or "
                            "enroll with --broker-config DIR (the make-broker-config.sh folder)")
        return {"agent_id": agent_id, "out": str(out), "config": str(config), "keyid": pin["keyid"],
                "broker_user": user, "broker_account": account is not None, "tags": tags,
                "files": sorted(p.name for p in out.iterdir()), "next_steps": steps}

    def list_agent_keys(self) -> list[dict]:
        """Every pinned report key: ``{"agent_id", "keyid", "source", "pinned_at", "actor"}`` by agent id."""
        return [{k: r[k] for k in ("agent_id", "keyid", "source", "pinned_at", "actor")}
                for r in self.registry.list_agent_keys()]

    def set_agent_tags(self, agent_id: str, tags: Mapping[str, str] | None = None, remove: Iterable[str] = (),
                       ) -> dict:
        """Change an agent's tags on the hub (they override what the agent reports; audited): returns
        ``{"agent_id", "tags", "reported_tags", "hub_tags"}``."""
        remove = list(remove)
        checked = checked_tags(tags or {})
        checked_tags(dict.fromkeys(remove, "removed"))  # the names to remove must be tag names too
        both = sorted(set(checked) & set(remove))
        if both:
            raise EnrollmentError(f"tag {both[0]} is both set and removed: keep one")
        row = self.registry.set_hub_tags(agent_id, checked, remove, actor=self.actor)
        return {k: row[k] for k in ("agent_id", "tags", "reported_tags", "hub_tags")}

    def send_agent_tags(self, fleet: Fleet, agent_id: str, tags: Mapping[str, str] | None = None,
                        remove: Iterable[str] = (), *, timeout: float = 30.0) -> dict:
        """Change an agent's own tags with a signed ``set_tags`` command over the started ``fleet``: the
        agent saves them (they replace its config's ``[tags]``, also after restarts) and announces them
        in its state; the hub's own changes of that agent are dropped once it confirms. Returns
        ``{"agent_id", "ok", "code", "message", "tags"}`` (``ok`` False: refused, or no answer in time)."""
        remove = list(remove)
        checked = checked_tags(tags or {})
        checked_tags(dict.fromkeys(remove, "removed"))
        self.require_agents([agent_id], fleet)
        new = {k: v for k, v in {**self.registry.get_agent(agent_id)["tags"], **checked}.items() if k not in remove}
        cmd = fleet.make_command(agent_id, "set_tags", {"tags": checked_tags(new)})
        fleet.send(cmd)
        out = fleet.outcome(cmd.command_id, ("command_result",), timeout)
        self.audit("agent.tags_sent", agent_id, tags=new, ok=out.ok, code=out.code, command_id=cmd.command_id)
        if out.ok:
            self.registry.clear_hub_tags(agent_id, actor=self.actor)
        return {"agent_id": agent_id, "ok": out.ok, "code": out.code, "message": out.message, "tags": new}


def _write_new(path: Path, data: bytes, mode: int) -> Path:
    """Create ``path`` (it must not exist) with ``mode`` from the start."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    except FileExistsError:
        raise EnrollmentError(f"{path} exists already; enrollment never overwrites a key: choose another --out "
                              "folder") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return path


class _BrokerAccount:
    """The agent's account in a ``make-broker-config.sh`` folder (``passwd``, ``passwords/``, ``ca.pem``)."""

    def __init__(self, folder: Path, agent_id: str) -> None:
        self.folder = folder.resolve()
        self.agent_id = agent_id
        self.passwd = self.folder / "passwd"
        self.clear = self.folder / "passwords" / agent_id
        self.ca = self.folder / "ca.pem"
        self._password: str | None = None

    def check(self) -> None:
        if not self.passwd.is_file() or not (self.folder / "edgeloop.acl").is_file():
            raise EnrollmentError(f"--broker-config {self.folder} is not a folder written by "
                                  "packaging/mosquitto/make-broker-config.sh (no passwd or edgeloop.acl there); "
                                  "run that script first, or leave --broker-config out")
        if shutil.which("mosquitto_passwd") is None:
            raise EnrollmentError("mosquitto_passwd is not installed (Debian/Ubuntu: apt-get install mosquitto); "
                                  "it hashes the agent's password into the broker's password file")

    def password(self, *, new: bool) -> str:
        """The account's password: the one kept in ``passwords/<id>`` unless ``new``, else a fresh one."""
        if not new and self.clear.is_file():
            self._password = self.clear.read_text("utf-8").splitlines()[0].strip()
        if not self._password:
            self._password = secrets.token_urlsafe(24)
        return self._password

    def add(self) -> None:
        """Keep the password in ``passwords/<id>`` (0600) and put its hash in ``passwd``, replacing the
        agent's old line; the plain text goes through a 0600 file, never a command line."""
        assert self._password is not None
        self.clear.parent.mkdir(mode=0o700, exist_ok=True)
        atomic_write_bytes(self.clear, (self._password + "\n").encode(), mode=0o600)
        tmp = self.folder / f".enroll-{self.agent_id}.{secrets.token_hex(4)}"
        try:
            _write_new(tmp, f"{self.agent_id}:{self._password}\n".encode(), 0o600)
            done = subprocess.run(["mosquitto_passwd", "-U", str(tmp)], capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                raise EnrollmentError(f"mosquitto_passwd failed: {(done.stderr or done.stdout).strip()}")
            hashed = tmp.read_text("utf-8").strip()
        finally:
            tmp.unlink(missing_ok=True)
        kept = [line for line in self.passwd.read_text("utf-8").splitlines()
                if line.strip() and line.split(":", 1)[0] != self.agent_id]
        mode = self.passwd.stat().st_mode & 0o777
        atomic_write_bytes(self.passwd, ("\n".join([*kept, hashed]) + "\n").encode(), mode=mode)
