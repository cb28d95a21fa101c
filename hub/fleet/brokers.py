"""MQTT brokers the hub can start for itself.

* :class:`EmbeddedBroker` -- amqtt, pure Python, in a background thread: the
  zero-install default for the demo (MQTT 3.1.1 only; fine for a laptop, not for a fleet).
* :class:`MosquittoBroker` -- a private ``mosquitto`` process on a free port with its
  own config file (used by the tests, and by the demo with ``--broker mosquitto``).

Both pick a free port: never assume 1883 is free (a system broker may hold it). Their
``address`` is a :class:`edgeloop.agent.connection.BrokerSettings` (plain, anonymous).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from edgeloop.agent.connection import BrokerSettings
from edgeloop.hub.errors import BrokerError

if TYPE_CHECKING:
    from amqtt.broker import Broker

log = logging.getLogger(__name__)


# The old name of the broker address: every address is now a BrokerSettings (TLS, credentials too).
BrokerAddress = BrokerSettings


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BrokerError(f"broker on {host}:{port} did not accept connections within {timeout:.0f} s")


class _ProtocolProbeFilter(logging.Filter):
    """Quiets amqtt's warnings about the MQTT 5 CONNECT our clients try first: amqtt speaks 3.1.1 only,
    refuses it ("Invalid protocol ... 5", or the v5 will properties read as "Will flag set, but will
    topic/message not present"), and our clients fall back to 3.1.1 at once, so the warning says nothing
    the user can act on. They stay visible at DEBUG; a client that really cannot connect reports its own
    specific error (docs/operator-guide.md)."""

    PROBE = ("Invalid connection from", "Invalid protocol from", "will topic/message not present")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and any(p in record.getMessage() for p in self.PROBE):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


class EmbeddedBroker:
    """amqtt broker on 127.0.0.1:<free port>, running its own asyncio loop in a thread."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.address = BrokerSettings(host, port or free_port(host))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Broker | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> EmbeddedBroker:
        from amqtt.broker import Broker  # hub-only dependency

        amqtt_log = logging.getLogger("amqtt.broker")
        if not any(isinstance(f, _ProtocolProbeFilter) for f in amqtt_log.filters):
            amqtt_log.addFilter(_ProtocolProbeFilter())

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.address.host}:{self.address.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                broker = self._broker = Broker(config, loop=loop)
                loop.run_until_complete(broker.start())
            except BaseException as exc:  # reported to the caller of start()
                self._error = exc
                self._started.set()
                return
            self._started.set()
            loop.run_forever()
            loop.close()

        logging.getLogger("amqtt").setLevel(logging.WARNING)
        logging.getLogger("transitions").setLevel(logging.WARNING)
        self._thread = threading.Thread(target=run, name="embedded-broker", daemon=True)
        self._thread.start()
        self._started.wait(15)
        if self._error is not None:
            raise BrokerError(f"embedded broker failed to start on {self.address.url}: {self._error}")
        if not self._started.is_set():
            raise BrokerError(f"embedded broker did not start on {self.address.url} within 15 s")
        log.info("embedded MQTT broker (amqtt) listening on %s", self.address.url)
        return self

    def stop(self) -> None:
        if self._loop is None or self._broker is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
        try:
            fut.result(timeout=10)
        except Exception as exc:  # shutting down anyway
            log.debug("embedded broker shutdown: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._loop = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class MosquittoBroker:
    """A private Mosquitto process with its own config on a free port."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, workdir: Path | None = None,
                 extra_config: str = "", tcp_nodelay: bool = True) -> None:
        self.address = BrokerSettings(host, port or free_port(host))
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="edgeloop-mosquitto-"))
        self.extra_config = extra_config
        self.tcp_nodelay = tcp_nodelay  # False: Mosquitto's default (Nagle on), what most users run
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def executable() -> str:
        exe = shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
        )
        if exe is None:
            raise BrokerError(
                "mosquitto is not installed: install it (Debian/Ubuntu: apt-get install mosquitto "
                "mosquitto-clients) or use the embedded broker"
            )
        return exe

    def start(self) -> MosquittoBroker:
        exe = self.executable()
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.address.port} {self.address.host}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\n"
            "max_queued_messages 10000\n"
            f"{'set_tcp_nodelay true' if self.tcp_nodelay else ''}\n"
            f"{self.extra_config}\n"
        )
        self._log = open(self.workdir / "mosquitto.log", "wb")
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.address.host, self.address.port)
        except BrokerError:
            self.stop()
            raise BrokerError(
                f"mosquitto did not start on {self.address.url}; its log: "
                f"{(self.workdir / 'mosquitto.log').read_text(errors='replace')[-2000:]}"
            ) from None
        log.info("mosquitto (pid %d) listening on %s", self.proc.pid, self.address.url)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
            self._log.close()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
