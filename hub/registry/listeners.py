"""Who keeps the registry's fleet view current: the hub runtime's heartbeat.

A hub runtime (``edgeloop hub serve``, or the GUI running it in-process) holds one row
in ``listeners``, keyed by its MQTT client id -- fixed per hub home
(:meth:`Listeners.hub_client_id`), so a restarted runtime takes over its row and its
broker session. It records when it started, since when it is connected to the broker,
a heartbeat every few seconds, the last time it was known to listen and when it
stopped. :meth:`Listeners.listening` turns that into what CLI reads print: listening
since when, or when a hub last listened.
"""

from __future__ import annotations

import uuid
from typing import Any

from edgeloop.hub.registry.db import RegistryDatabase
from edgeloop.hub.registry.fields import now

STALE_AFTER_BEATS = 3  # a runtime whose heartbeat is older than this many intervals is gone
STALE_SLACK_S = 5.0


class Listeners(RegistryDatabase):
    """The ``listeners`` table: hub runtimes and their heartbeats."""

    def hub_client_id(self) -> str:
        """This registry's MQTT client id for its hub runtime, made on first use and kept
        (a persistent broker session is bound to it)."""
        with self._write() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'hub_client_id'").fetchone()
            if row is not None:
                return str(row[0])
            client_id = f"edgeloop-hub-{uuid.uuid4().hex[:16]}"
            db.execute("INSERT INTO meta (key, value) VALUES ('hub_client_id', ?)", [client_id])
        return client_id

    def listener_started(self, client_id: str, *, pid: int, host: str, broker: str, topic_root: str,
                         heartbeat_s: float) -> None:
        """A runtime with ``client_id`` started (not connected yet)."""
        at = now()
        with self._write() as db:
            db.execute(
                "INSERT INTO listeners (id, pid, host, broker, topic_root, heartbeat_s, started_at, heartbeat_at, "
                "connected_since, stopped_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL) "
                "ON CONFLICT(id) DO UPDATE SET pid = excluded.pid, host = excluded.host, broker = excluded.broker, "
                "topic_root = excluded.topic_root, heartbeat_s = excluded.heartbeat_s, "
                "started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, connected_since = NULL, "
                "stopped_at = NULL",
                [client_id, pid, host, broker, topic_root, float(heartbeat_s), at, at])

    def listener_heartbeat(self, client_id: str, *, connected: bool, at: float | None = None) -> None:
        """The runtime is alive; ``connected``: to the broker, with its subscriptions."""
        at = now() if at is None else at
        with self._write() as db:
            if connected:
                db.execute("UPDATE listeners SET heartbeat_at = ?, last_listened_at = ?, "
                           "connected_since = COALESCE(connected_since, ?) WHERE id = ?", [at, at, at, client_id])
            else:
                db.execute("UPDATE listeners SET heartbeat_at = ?, connected_since = NULL WHERE id = ?",
                           [at, client_id])

    def listener_stopped(self, client_id: str, *, connected: bool) -> None:
        """The runtime stopped (cleanly); ``connected``: it was listening up to now."""
        at = now()
        with self._write() as db:
            db.execute("UPDATE listeners SET stopped_at = ?, heartbeat_at = ?, connected_since = NULL, "
                       "last_listened_at = CASE WHEN ? THEN ? ELSE last_listened_at END WHERE id = ?",
                       [at, at, int(connected), at, client_id])

    def listening(self, at: float | None = None) -> dict[str, Any]:
        """How fresh the fleet view is: ``{"listening", "since", "last_listened_at", "running",
        "pid", "host", "broker", "topic_root", "heartbeat_at"}``.

        ``listening``: a runtime is running (fresh heartbeat, not stopped) and connected;
        ``since``: since when it is connected. ``running`` without ``listening``: the
        runtime is up but cannot reach the broker. ``last_listened_at``: the last moment
        any runtime of this registry was known to listen (None: never).
        """
        at = now() if at is None else at
        rows = self._rows("listeners", order_by="heartbeat_at DESC")
        last = max((r["last_listened_at"] for r in rows if r["last_listened_at"]), default=None)
        out: dict[str, Any] = {"listening": False, "running": False, "since": None, "last_listened_at": last,
                               "pid": None, "host": None, "broker": None, "topic_root": None, "heartbeat_at": None}
        for r in rows:
            fresh = at - r["heartbeat_at"] <= STALE_AFTER_BEATS * r["heartbeat_s"] + STALE_SLACK_S
            if r["stopped_at"] is None and fresh:
                out.update(running=True, listening=r["connected_since"] is not None, since=r["connected_since"],
                           pid=r["pid"], host=r["host"], broker=r["broker"], topic_root=r["topic_root"],
                           heartbeat_at=r["heartbeat_at"])
                break
        return out
