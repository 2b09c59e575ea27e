"""Domain exceptions with stable error ids, and the one table that maps them to gRPC status codes."""

from __future__ import annotations

from typing import Any

import grpc


class OutdialError(Exception):
    """Base of every domain error. ``error_id`` is stable (clients may match on it)."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_id = "internal"

    def __init__(self, message: str, *, error_id: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.error_id = error_id or self.default_id
        self.details = details

    def status_message(self) -> str:
        return f"{self.error_id}: {self.message}"


class InvalidArgument(OutdialError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_id = "invalid_argument"

    def __init__(
        self, message: str, *, field: str | None = None, error_id: str | None = None, **details: Any
    ):
        super().__init__(message, error_id=error_id, field=field, **details)
        self.field = field

    def status_message(self) -> str:
        where = f" [{self.field}]" if self.field else ""
        return f"{self.error_id}{where}: {self.message}"


class NotFound(OutdialError):
    code = grpc.StatusCode.NOT_FOUND
    default_id = "not_found"


class AlreadyExists(OutdialError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_id = "already_exists"


class FailedPrecondition(OutdialError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_id = "failed_precondition"


class Aborted(OutdialError):
    """A retryable conflict (serialisation failure, WATCH conflict)."""

    code = grpc.StatusCode.ABORTED
    default_id = "aborted"


class Unavailable(OutdialError):
    """A dependency (PostgreSQL, Redis, another service) is down."""

    code = grpc.StatusCode.UNAVAILABLE
    default_id = "unavailable"


class PermissionDenied(OutdialError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_id = "permission_denied"


class Unauthenticated(OutdialError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_id = "unauthenticated"


class ResourceExhausted(OutdialError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_id = "resource_exhausted"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """Map an exception to (code, message); None means "unexpected": INTERNAL with a generic message.

    The one table of the project: domain errors carry their own code; the infrastructure's errors are
    mapped by type so that a down dependency reads as UNAVAILABLE and a serialisation failure as ABORTED.
    """
    if isinstance(exc, OutdialError):
        return exc.code, exc.status_message()
    # Imported here so that this module stays importable by pure code paths.
    import asyncpg
    import redis.exceptions as redis_exc

    if isinstance(exc, asyncpg.exceptions.SerializationError | asyncpg.exceptions.DeadlockDetectedError):
        return grpc.StatusCode.ABORTED, "aborted: concurrent update, retry"
    if isinstance(
        exc,
        OSError
        | asyncpg.exceptions.ConnectionDoesNotExistError
        | asyncpg.exceptions.CannotConnectNowError
        | asyncpg.exceptions.InterfaceError
        | asyncpg.exceptions.PostgresConnectionError
        | asyncpg.exceptions.AdminShutdownError
        | redis_exc.ConnectionError
        | redis_exc.TimeoutError
        | TimeoutError,
    ):
        return grpc.StatusCode.UNAVAILABLE, "unavailable: a dependency (PostgreSQL or Redis) is not answering"
    return None
