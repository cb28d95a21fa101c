"""Exception hierarchy shared by every edgeloop component.

Every error carries a short machine-readable ``code`` (used in error responses on
the wire) and a message that tells the user what happened and what to do next.
"""

from __future__ import annotations


class EdgeloopError(Exception):
    """Base class of every error edgeloop raises on purpose."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


# --- wire format -----------------------------------------------------------
class MessageFormatError(EdgeloopError):
    """A message on the wire is not what its schema says (bad JSON, missing field...)."""

    code = "bad_message"


class UnsupportedSchemaError(MessageFormatError):
    code = "unsupported_schema"


class PayloadTooLargeError(MessageFormatError):
    code = "payload_too_large"


# --- signatures ------------------------------------------------------------
class SignatureError(EdgeloopError):
    """A signature does not verify against any trusted key."""

    code = "bad_signature"


class UntrustedKeyError(SignatureError):
    code = "untrusted_key"


class KeyFileError(EdgeloopError):
    code = "key_file"


# --- bundles ---------------------------------------------------------------
class BundleError(EdgeloopError):
    code = "bad_bundle"


class BundleFormatError(BundleError):
    code = "bundle_format"


class HashMismatchError(BundleError):
    code = "hash_mismatch"


class SizeMismatchError(BundleError):
    code = "size_mismatch"


class MissingFileError(BundleError):
    code = "missing_file"


class UnexpectedFileError(BundleError):
    code = "unexpected_file"


class BundleTooLargeError(BundleError):
    code = "bundle_too_large"


class SmokeTestError(BundleError):
    code = "smoke_test_failed"


class InstallTimeoutError(BundleError):
    """Loading, warming up or smoke-testing a model did not end within the agent's install deadline."""

    code = "install_timeout"


class BundleMismatchError(BundleError):
    """The bundle holds another model or version than the deploy command names."""

    code = "bundle_mismatch"


# --- commands --------------------------------------------------------------
class CommandError(EdgeloopError):
    code = "bad_command"


class ReplayError(CommandError):
    code = "replayed"


class ExpiredCommandError(CommandError):
    code = "expired"


class WrongTargetError(CommandError):
    code = "wrong_target"


class UnknownCommandError(CommandError):
    code = "unknown_command"


class CommandLifetimeError(CommandError):
    """A command valid for longer than an agent accepts (its expiry too far ahead)."""

    code = "expiry_too_far"


# --- store / transfer ------------------------------------------------------
class StoreError(EdgeloopError):
    code = "store"


class DiskSpaceError(StoreError):
    """Too little free space in the agent's state folder for a bundle (and the reserve)."""

    code = "insufficient_space"


class DiskFullError(StoreError):
    """A write to the agent's state folder failed because its file system is full (ENOSPC, EDQUOT).

    ``free`` and ``needed`` are bytes (None where unknown)."""

    code = "disk_full"

    def __init__(self, message: str, *, free: int | None = None, needed: int | None = None) -> None:
        super().__init__(message)
        self.free = free
        self.needed = needed


class TransferError(EdgeloopError):
    code = "transfer"


# --- inference -------------------------------------------------------------
class InferenceError(EdgeloopError):
    code = "inference"


class InputShapeError(InferenceError):
    code = "bad_shape"


class InputValueError(InferenceError):
    code = "bad_value"


class ModelNotFoundError(InferenceError):
    code = "model_not_found"


class ModelNotReadyError(InferenceError):
    code = "model_not_ready"


class ConfigError(EdgeloopError):
    code = "config"
