"""Why a connection to the broker failed, in words that say what to do next.

Pure functions from what the socket, the TLS layer or the broker's CONNACK said to a
:class:`BrokerConnectError` with a ``code``:

=================  ===========================================================
``refused``        nothing listens on that port (broker down, wrong port)
``unknown_host``   the host name does not resolve
``unreachable``    no route to the host (network down, wrong address)
``timeout``        no answer to the TCP connect, or no CONNACK after it
``not_authorised`` the broker refused the user name / password (CONNACK 4/5, MQTT 5 0x86/0x87)
``tls``            the broker's certificate is not trusted, names another host, expired; or
                   the broker wants (another) client certificate
``protocol``       the port does not speak what we sent (TLS vs plain, not MQTT), or the
                   broker refused the MQTT version that was forced
``broker_refused`` any other CONNACK refusal (client id rejected, server busy, banned...)
=================  ===========================================================
"""

from __future__ import annotations

import socket
import ssl
from typing import TYPE_CHECKING

from edgeloop.agent.errors import EdgeloopError

if TYPE_CHECKING:
    from edgeloop.agent.connection import BrokerSettings

# CONNACK return codes (MQTT 3.1.1) and reason codes (MQTT 5)
V3_BAD_PROTOCOL, V3_BAD_CLIENT_ID, V3_UNAVAILABLE, V3_BAD_LOGIN, V3_NOT_AUTHORISED = 1, 2, 3, 4, 5
V5_BAD_PROTOCOL, V5_BAD_CLIENT_ID, V5_BAD_LOGIN, V5_NOT_AUTHORISED = 0x84, 0x85, 0x86, 0x87
PROTOCOL_REFUSALS = (V3_BAD_PROTOCOL, V5_BAD_PROTOCOL)

# OpenSSL certificate verification results (X509_V_ERR_*)
_CERT_EXPIRED, _CERT_NOT_YET_VALID, _HOSTNAME_MISMATCH = 10, 9, 62
_UNTRUSTED = {2: "the issuer's certificate is unknown", 18: "self-signed certificate",
              19: "self-signed certificate in the chain", 20: "unable to get the local issuer certificate",
              21: "unable to verify the first certificate"}

_LOGIN_HELP = ("check the user name (--username, mqtt.username or $EDGELOOP_MQTT_USERNAME) and the password "
               "(--password-file, mqtt.password_file or $EDGELOOP_MQTT_PASSWORD)")
_CLIENT_CERT_HELP = "--cert-file/--key-file (agent config: mqtt.tls.cert_file/key_file)"


class BrokerConnectError(EdgeloopError):
    """The broker could not be reached or refused us; ``code`` says which way (see the module)."""

    code = "broker_connect"

    def __init__(self, message: str, *, code: str, broker_url: str) -> None:
        super().__init__(message, code=code)
        self.broker_url = broker_url


def _err(settings: BrokerSettings, code: str, what: str, todo: str) -> BrokerConnectError:
    return BrokerConnectError(f"cannot connect to the MQTT broker at {settings.url}: {what}; {todo}",
                              code=code, broker_url=settings.url)


def from_socket_error(exc: BaseException, settings: BrokerSettings, timeout: float) -> BrokerConnectError:
    """The error of a failed TCP connect or TLS handshake."""
    host, port = settings.host, settings.port
    if isinstance(exc, ssl.SSLCertVerificationError) or isinstance(exc, ssl.CertificateError):
        return _cert_error(exc, settings)
    if isinstance(exc, ssl.SSLError):
        return from_tls_text(f"{exc.reason or exc}", settings, handshake=True)
    if isinstance(exc, socket.gaierror):
        return _err(settings, "unknown_host", f"the host name {host!r} does not resolve ({exc.strerror})",
                    "check its spelling, or give the broker's IP address")
    if isinstance(exc, ConnectionRefusedError):
        hint = (f"the usual ports are {1883} for mqtt:// and {8883} for mqtts://"
                if port not in (1883, 8883) else "check the port")
        return _err(settings, "refused", f"nothing is listening on {host} port {port} (connection refused)",
                    f"is the broker running there, and is {port} its port? ({hint})")
    if isinstance(exc, TimeoutError | socket.timeout):
        return timeout_error(settings, timeout, tcp=True)
    if isinstance(exc, ConnectionResetError | BrokenPipeError | EOFError):
        if settings.tls is not None:  # only the TLS handshake reads before the CONNECT is sent
            return _err(settings, "protocol", f"the connection was closed during the TLS handshake ({exc})",
                        "is that port a TLS listener? use mqtt:// for a plain port (usually 1883), or the "
                        "broker's TLS port (usually 8883)")
        return closed_error(settings, f"{exc}")
    if isinstance(exc, OSError):
        return _err(settings, "unreachable", f"{host} port {port} cannot be reached ({exc.strerror or exc})",
                    "check the address and the network between here and the broker")
    return _err(settings, "broker_connect", f"{type(exc).__name__}: {exc}", "see the agent or hub log (DEBUG)")


def _cert_error(exc: BaseException, settings: BrokerSettings) -> BrokerConnectError:
    code = getattr(exc, "verify_code", None)
    detail = getattr(exc, "verify_message", None) or str(exc)
    if code == _HOSTNAME_MISMATCH or "hostname" in detail.lower() or "match" in detail.lower():
        return _err(settings, "tls", f"the broker's certificate does not name {settings.host!r} (hostname "
                    f"mismatch: {detail})", "connect with a name the certificate was issued for (its "
                    "subjectAltName), or reissue it; turning off check_hostname is for tests only")
    if code == _CERT_EXPIRED:
        return _err(settings, "tls", "the broker's certificate has expired", "renew it on the broker")
    if code == _CERT_NOT_YET_VALID:
        return _err(settings, "tls", "the broker's certificate is not valid yet",
                    "check the clock of this machine and of the broker")
    why = _UNTRUSTED.get(code or -1, detail)
    return _err(settings, "tls", f"the broker's certificate is not signed by a CA this side trusts ({why})",
                "give the CA certificate that signed it (--ca-file, or mqtt.tls.ca_file in the agent config)")


def from_tls_text(text: str, settings: BrokerSettings, *, handshake: bool) -> BrokerConnectError:
    """A TLS failure known only by its text (a handshake error, or an alert the broker sent after it)."""
    t = text.upper()
    if "CERTIFICATE_REQUIRED" in t or ("HANDSHAKE_FAILURE" in t and not handshake):
        return _err(settings, "tls", "the broker requires a client certificate",
                    f"give one signed by a CA the broker trusts: {_CLIENT_CERT_HELP}")
    if any(k in t for k in ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN", "DECRYPT_ERROR")):
        return _err(settings, "tls", f"the broker rejected this side's client certificate ({text})",
                    f"use a certificate signed by a CA the broker trusts: {_CLIENT_CERT_HELP}")
    if "CERTIFICATE_EXPIRED" in t:
        return _err(settings, "tls", "the broker says this side's client certificate has expired",
                    f"renew it: {_CLIENT_CERT_HELP}")
    if not handshake and ("EOF" in t or "RESET" in t):
        # the handshake went through (the broker's certificate checked out), then the broker hung up
        # without a word: TLS 1.3 brokers check the client certificate only after the handshake
        if settings.tls is not None and settings.tls.cert_file is not None:
            return _err(settings, "tls", f"the broker closed the connection right after the TLS handshake ({text}): "
                        "it most likely rejected this side's client certificate",
                        f"use a certificate signed by a CA the broker trusts: {_CLIENT_CERT_HELP}")
        return _err(settings, "tls", f"the broker closed the connection right after the TLS handshake ({text}): it "
                    "most likely requires a client certificate", f"give one signed by a CA the broker trusts: "
                    f"{_CLIENT_CERT_HELP}")
    if any(k in t for k in ("WRONG_VERSION_NUMBER", "RECORD_LAYER", "PACKET_LENGTH", "HTTP_REQUEST", "UNEXPECTED_EOF",
                            "EOF OCCURRED")):
        return _err(settings, "protocol", f"the TLS handshake failed ({text}): that port does not seem to speak TLS",
                    "use mqtt:// for a plain port (usually 1883) or the broker's TLS port (usually 8883)")
    return _err(settings, "tls", f"TLS failed ({text})", "check the broker's TLS listener and this side's TLS settings")


def from_connack(rc: int, reason: str, settings: BrokerSettings, *, mqtt5: bool) -> BrokerConnectError:
    """The error of a CONNACK that refused us: ``rc`` its MQTT 5 reason code (paho's callback API v2
    gives 3.1.1 return codes as reason codes too) or 3.1.1 return code; ``mqtt5`` what was spoken."""
    user = settings.username
    if rc in (V5_BAD_LOGIN, V3_BAD_LOGIN):
        what = f"the broker refused the login of user {user!r} (bad user name or password)" if user else \
            "the broker wants a user name and password"
        return _err(settings, "not_authorised", what, _LOGIN_HELP)
    if rc in (V5_NOT_AUTHORISED, V3_NOT_AUTHORISED):
        what = (f"the broker refused user {user!r}: not authorised (wrong password, unknown user, or a user "
                "who may not connect)") if user else "the broker does not accept anonymous clients (not authorised)"
        return _err(settings, "not_authorised", what, _LOGIN_HELP)
    if rc in PROTOCOL_REFUSALS:
        wanted = "MQTT 5" if mqtt5 else "MQTT 3.1.1"
        return _err(settings, "protocol", f"the broker does not accept {wanted}",
                    "set the protocol to auto (the default), or to the version the broker speaks")
    if rc in (V3_BAD_CLIENT_ID, V5_BAD_CLIENT_ID):
        return _err(settings, "broker_refused", f"the broker rejected the client id ({reason})",
                    "use another client id, or allow it on the broker")
    return _err(settings, "broker_refused", f"the broker refused the connection ({reason}, code {rc})",
                "see the broker's log; a busy or unavailable broker can be retried later")


def closed_error(settings: BrokerSettings, last_error: str | None) -> BrokerConnectError:
    """The broker (or whatever listens there) closed the connection before answering the CONNECT."""
    if last_error and any(k in last_error.upper() for k in ("ALERT", "SSL", "TLS")):
        return from_tls_text(last_error, settings, handshake=False)
    if settings.tls is None:
        todo = ("if that port is a TLS listener, use mqtts:// (and --ca-file); otherwise check that an MQTT broker "
                "listens there and read its log")
    else:
        todo = "check that an MQTT broker listens there, and read its log (it may want a client certificate)"
    seen = f" ({last_error})" if last_error else ""
    return _err(settings, "protocol", f"the connection was closed before the broker answered{seen}", todo)


def timeout_error(settings: BrokerSettings, timeout: float, *, tcp: bool) -> BrokerConnectError:
    if tcp:
        return _err(settings, "timeout", f"{settings.host} port {settings.port} did not answer within {timeout:.1f} s",
                    f"check the address, and that no firewall drops port {settings.port}")
    todo = ("is it an MQTT port? a TLS listener needs mqtts://" if settings.tls is None
            else "is it an MQTT port, and is the broker overloaded?")
    return _err(settings, "timeout", f"the connection was accepted but no MQTT answer came within {timeout:.1f} s",
                todo)
