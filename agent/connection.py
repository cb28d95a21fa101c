"""How to reach an MQTT broker: address, TLS, credentials, protocol and session, in one place.

:class:`BrokerSettings` is what both ends hand to :class:`edgeloop.agent.mqtt_link.MqttLink`:
the agent builds it from the ``[mqtt]`` table of its config (:mod:`edgeloop.agent.config`),
the hub from its command line options (``edgeloop.hub.cli.common``) or a URL.

URLs: ``mqtt://[user@]host[:port]`` (port 1883) and ``mqtts://[user@]host[:port]`` (TLS,
port 8883, the system's CAs unless a CA file is given). A password is never part of
:attr:`BrokerSettings.url` nor of the repr; it comes from a password file, a config file or
the ``EDGELOOP_MQTT_PASSWORD`` environment variable (a password inside a URL is accepted, but
a URL on a command line is visible to every user of the machine in ``ps``).
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from edgeloop.agent.errors import ConfigError

ENV_BROKER = "EDGELOOP_BROKER"
ENV_USERNAME = "EDGELOOP_MQTT_USERNAME"
ENV_PASSWORD = "EDGELOOP_MQTT_PASSWORD"

PORT = 1883
TLS_PORT = 8883
PROTOCOLS = ("auto", "5", "3.1.1")  # auto: MQTT 5 first, 3.1.1 when the broker refuses 5
SCHEMES = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True}  # scheme -> TLS

# Where a setting came from, for error messages: the agent config names its keys, the CLI its options.
Label = Callable[[str], str]
TLS_FILES = ("ca_file", "cert_file", "key_file")
CONFIG_KEYS: Label = lambda name: f"mqtt.tls.{name}" if name in TLS_FILES else f"mqtt.{name}"


@dataclass(frozen=True)
class TlsSettings:
    """TLS towards the broker. No CA file: the system's trusted CAs; a client certificate
    (cert and key, PEM, key unencrypted) only where the broker asks for one."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    check_hostname: bool = True  # the broker's certificate must name the host connected to

    FILES = TLS_FILES

    def check(self, label: Label = CONFIG_KEYS) -> TlsSettings:
        """Every named file exists, and a certificate comes with its key; ConfigError naming the setting."""
        for name in self.FILES:
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{label(name)}: {path} does not exist or is not a file")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError(f"a client certificate needs both {label('cert_file')} and {label('key_file')}")
        return self

    def context(self, label: Label = CONFIG_KEYS) -> ssl.SSLContext:
        """An SSL context that verifies the broker (and its name unless check_hostname is off)."""
        self.check(label)
        try:
            ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"{label('ca_file')}: {self.ca_file} holds no usable PEM certificate: {exc}") from exc
        if self.cert_file is not None and self.key_file is not None:
            try:
                ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(f"{label('cert_file')} {self.cert_file} and {label('key_file')} {self.key_file} "
                                  f"are not a matching PEM certificate and unencrypted key: {exc}") from exc
        ctx.check_hostname = self.check_hostname
        return ctx


@dataclass(frozen=True)
class BrokerSettings:
    """Everything a client needs to connect. ``persistent`` keeps the session (subscriptions and
    QoS 1 messages queued while away) on the broker: MQTT 5 clean_start off with a Session
    Expiry Interval of ``session_expiry`` seconds; MQTT 3.1.1 clean_session off. It needs a
    fixed ``client_id``."""

    host: str = "127.0.0.1"
    port: int = PORT
    tls: TlsSettings | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    protocol: str = "auto"
    keepalive: int = 30
    client_id: str | None = None
    persistent: bool = False
    session_expiry: int = 7 * 24 * 3600

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("the broker needs a host name or address")
        if not 0 < self.port < 65536:
            raise ConfigError(f"broker port {self.port} is not within 1..65535")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"MQTT protocol {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if self.keepalive < 5:
            raise ConfigError(f"keepalive must be at least 5 seconds, got {self.keepalive}")
        if self.persistent and not self.client_id:
            raise ConfigError("a persistent MQTT session needs a fixed client id")

    @property
    def url(self) -> str:
        """``mqtt(s)://[user@]host:port``, never with the password."""
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{host}:{self.port}"

    def __str__(self) -> str:
        return self.url

    def replace(self, **changes) -> BrokerSettings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def parse(cls, url: str, **over) -> BrokerSettings:
        """``mqtt://[user[:password]@]host[:port]``, ``mqtts://...`` or plain ``host[:port]``;
        keyword arguments set the other fields (e.g. ``tls=TlsSettings(ca_file=...)``)."""
        scheme, username, password, host, port = parse_url(url)
        tls = TlsSettings() if SCHEMES[scheme] else None
        fields: dict[str, Any] = {"host": host, "port": port, "tls": tls, "username": username,
                                  "password": password}
        fields.update(over)
        return cls(**fields)


def parse_url(url: str) -> tuple[str, str | None, str | None, str, int]:
    """``(scheme, username, password, host, port)`` of a broker URL; ConfigError if it is not one."""
    text = url.strip()
    if "://" not in text:
        text = f"mqtt://{text}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"broker address {_hide_password(url)!r} has a bad port: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ConfigError(f"broker address {_hide_password(url)!r} is not of the form mqtt://[user@]host[:port] "
                          "or mqtts://[user@]host[:port]")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return scheme, username, password, parts.hostname, port or (TLS_PORT if SCHEMES[scheme] else PORT)


def url_has_password(url: str) -> bool:
    try:
        return parse_url(url)[2] is not None
    except ConfigError:
        return False


def _hide_password(url: str) -> str:
    head, sep, tail = url.rpartition("@")
    if not sep or "://" not in head:
        return url
    scheme, _, userinfo = head.partition("://")
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{tail}" if ":" in userinfo else url


def tls_from_options(scheme: str, *, ca_file: Path | None = None, cert_file: Path | None = None,
                     key_file: Path | None = None, no_check_hostname: bool = False) -> TlsSettings | None:
    """TLS settings from the command line options of both CLIs (``--ca-file``, ``--cert-file``,
    ``--key-file``, ``--no-check-hostname``), which need an ``mqtts://`` URL (``scheme``)."""
    options = {"--ca-file": ca_file, "--cert-file": cert_file, "--key-file": key_file,
               "--no-check-hostname": no_check_hostname}
    if not SCHEMES.get(scheme, False):
        given = [opt for opt, val in options.items() if val]
        if given:
            raise ConfigError(f"{', '.join(given)}: TLS options need an mqtts:// broker URL "
                              "(mqtts://host[:port], port 8883 by default)")
        return None
    labels = {"ca_file": "--ca-file", "cert_file": "--cert-file", "key_file": "--key-file"}
    resolve = lambda p: Path(p).resolve() if p is not None else None
    return TlsSettings(resolve(ca_file), resolve(cert_file), resolve(key_file),
                       check_hostname=not no_check_hostname).check(labels.__getitem__)


def password_in_url_warning(option: str) -> str:
    """What a CLI prints when a password came inside a URL on its command line."""
    return (f"warning: the password in {option} is visible to every user of this machine (ps, shell history); "
            "put it in a file readable only by you and pass --password-file FILE, or set EDGELOOP_MQTT_PASSWORD")


def read_password_file(path: Path, label: str) -> str:
    """The first line of a password file (trailing newline and spaces removed)."""
    try:
        text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{label}: cannot read the password file {path}: {exc}") from exc
    lines = text.splitlines()
    password = lines[0].rstrip() if lines else ""
    if not password:
        raise ConfigError(f"{label}: the password file {path} is empty")
    return password


def resolve_password(*, password: str | None = None, password_file: Path | None = None,
                     file_label: str = "mqtt.password_file",
                     env: Mapping[str, str] | None = None) -> str | None:
    """The password to log in with: a password file wins, then a literal password, then
    ``$EDGELOOP_MQTT_PASSWORD``; None when there is none."""
    if password_file is not None:
        return read_password_file(password_file, file_label)
    if password is not None:
        return password
    env = os.environ if env is None else env
    return env.get(ENV_PASSWORD) or None


def broker_from_options(url: str, *, username: str | None = None, password_file: Path | None = None,
                        ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None,
                        no_check_hostname: bool = False, protocol: str = "auto",
                        env: Mapping[str, str] | None = None) -> BrokerSettings:
    """Settings from a URL and the hub's options (``--username``, ``--password-file``, ``--ca-file`` ...).

    User name: ``username``, else the URL's, else ``$EDGELOOP_MQTT_USERNAME``. Password:
    ``password_file``, else the URL's, else ``$EDGELOOP_MQTT_PASSWORD`` (used only with a user name).
    """
    env = os.environ if env is None else env
    scheme, url_user, url_password, host, port = parse_url(url)
    if url_password is not None and password_file is not None:
        raise ConfigError("give the broker password either in the URL or with --password-file, not both")
    user = username or url_user or env.get(ENV_USERNAME) or None
    password = resolve_password(password=url_password, password_file=password_file,
                                file_label="--password-file", env=env)
    if user is None and (url_password is not None or password_file is not None):
        raise ConfigError("a broker password needs a user name: add --username NAME (or user@ in the URL, "
                          "or set EDGELOOP_MQTT_USERNAME)")
    tls = tls_from_options(scheme, ca_file=ca_file, cert_file=cert_file, key_file=key_file,
                           no_check_hostname=no_check_hostname)
    return BrokerSettings(host, port, tls=tls, username=user, password=password if user else None,
                          protocol=protocol)
