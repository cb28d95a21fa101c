"""Hub errors: all derive from :class:`edgeloop.agent.errors.EdgeloopError`."""

from edgeloop.agent.errors import EdgeloopError


class HubError(EdgeloopError):
    code = "hub"


class BrokerError(HubError):
    code = "broker"


class DataValidationError(HubError):
    """Raised with a report that names row, column and rule for every problem found."""

    code = "invalid_data"

    def __init__(self, message: str, problems: list | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


class TrainingError(HubError):
    code = "training"


class ExportError(HubError):
    code = "export"


class RegistryError(HubError):
    code = "registry"


class NotFoundError(RegistryError):
    code = "not_found"


class FleetError(HubError):
    code = "fleet"


class CancelledError(HubError):
    code = "cancelled"
