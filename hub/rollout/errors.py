"""Rollout errors: each says what is wrong and what to do next."""

from edgeloop.hub.errors import HubError


class RolloutError(HubError):
    code = "rollout"


class SelectorSyntaxError(RolloutError):
    """A target or selector string does not parse."""

    code = "bad_selector"


class PlanError(RolloutError):
    """A rollout plan is invalid; ``problems`` lists every problem found."""

    code = "bad_plan"

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


class RolloutStateError(RolloutError):
    """An operator command does not apply in the rollout's current status (e.g. approve while baking)."""

    code = "rollout_state"
