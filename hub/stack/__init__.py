"""``edgeloop up``: a local stack that keeps running -- a broker on a fixed port, the hub runtime
and local agents serving the demo model -- so that the examples in README.md and docs/ work as
written (:mod:`.plan`: ports, files, the state file; :mod:`.runner`: the processes)."""

from edgeloop.hub.stack.plan import BROKER_PORT, HTTP_PORT, METRICS_PORT, StackError, StackInfo, StackOptions
from edgeloop.hub.stack.runner import LocalStack

__all__ = ["BROKER_PORT", "HTTP_PORT", "METRICS_PORT", "LocalStack", "StackError", "StackInfo", "StackOptions"]
