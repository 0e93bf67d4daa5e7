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
    """Bad input: every problem found, not just the first, each with the request field it is
    about (a path like ``experiment`` or ``metadata.entry_point_id``; the API reports them as
    ``google.rpc.BadRequest`` field violations, so a field is required)."""

    def __init__(self, problems: list[str] | str, field: str) -> None:
        found = [problems] if isinstance(problems, str) else list(problems)
        self._set([(field, p) for p in found])

    @classmethod
    def of(cls, violations: list[tuple[str, str]]) -> InvalidArgument:
        """One error of several fields' (field, problem) pairs."""
        err = cls.__new__(cls)
        err._set(list(violations))
        return err

    def _set(self, violations: list[tuple[str, str]]) -> None:
        self.violations = violations
        super().__init__("; ".join(problem for _, problem in violations))

    @property
    def problems(self) -> list[str]:
        return [problem for _, problem in self.violations]


class AlreadyExists(DomainError):
    pass


class FailedPrecondition(DomainError):
    pass


class Unavailable(DomainError):
    pass
