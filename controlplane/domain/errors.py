"""Domain errors. The API layer maps each to one gRPC status code (api/errors.py)."""

from __future__ import annotations


class DomainError(Exception):
    """Base of errors written for users."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(DomainError):
    pass


class InvalidArgument(DomainError):
    """Bad input; ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: list[str] | str, field: str = "") -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.field = field
        super().__init__("; ".join(self.problems))


class AlreadyExists(DomainError):
    pass


class FailedPrecondition(DomainError):
    pass


class Unavailable(DomainError):
    pass
