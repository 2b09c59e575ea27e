"""Input and load limits shared by every gRPC server (issue 12, finding 5).

- **Message size.** gRPC refuses a received message larger than ``Settings.grpc_max_receive_bytes``
  (4 MiB) before it is parsed; the streams that carry files (UploadLeads, ImportRegistry) send 1 MiB chunks.
- **No parsing before admission.** A call whose token is refused, or whose caller is over its rate, is
  answered by a handler whose deserializer never parses the request (:func:`refusal`).
- **List sizes.** Every repeated or map field of every request message, at any depth, holds at most
  ``Settings.limit_list_items`` items (INVALID_ARGUMENT naming the field and the limit), except the number
  batches of the DNC service, bounded by its own ``OUTDIAL_DNC_MAX_BATCH`` (:data:`SERVICE_BOUNDED`).
- **Per-principal concurrency.** Open server streams (Connect, WatchPacing, QueryAudit, …) and uploads
  (client streams: UploadLeads, ImportRegistry) per caller (role and subject) are capped.
- **Per-principal rate.** A token bucket per caller for every RPC not in :data:`READ_ONLY`.

The refusals are RESOURCE_EXHAUSTED with a message naming the limit, its setting and when to retry (and
the ``grpc-retry-pushback-ms`` trailer a gRPC retry policy honours), all counted in
``outdial_limit_rejected_total``. Services (role ``service``) have their own, generous, defaults: the
dialer's OfferCall and dial-time CheckNumbers at full pace stay far below them.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from outdial.core.auth import Principal, Role
from outdial.core.config import Settings
from outdial.core.errors import InvalidArgument, OutdialError, ResourceExhausted
from outdial.core.metrics import LIMIT_OPEN, LIMIT_REJECTED

MiB = 1024 * 1024

# RPCs that change nothing: no rate limit (their cost is bounded by the list and message limits, and the
# streaming ones by the concurrency cap). Every other RPC is "mutating" and takes a token from the
# caller's bucket. CheckNumbers is mutating: with dial_time it appends to the audit log.
READ_ONLY: frozenset[str] = frozenset(
    f"/outdial.v1.{svc}/{rpc}"
    for svc, rpcs in {
        "CampaignService": (
            "GetCampaign",
            "ListCampaigns",
            "GetLeadList",
            "ListLeadLists",
            "ListLeadRejects",
            "GetCampaignStats",
        ),
        "DncService": ("ListLists", "QueryAudit", "VerifyAudit", "ExplainDecision"),
        "AgentService": ("Connect", "ListAgents", "GetAgentCounts"),
        "PacingService": ("GetPacingState", "WatchPacing"),
        "GatewayService": ("ListCalls", "StreamCallEvents", "GetGatewayStatus"),
    }.items()
    for rpc in rpcs
)

# Repeated fields whose bound is a service's own setting, checked by that service (not by the generic
# list limit): field full name -> the setting that bounds it.
SERVICE_BOUNDED: dict[str, str] = {
    "outdial.v1.CheckNumbersRequest.numbers": "OUTDIAL_DNC_MAX_BATCH",
    "outdial.v1.CheckNumbersRequest.call_ids": "OUTDIAL_DNC_MAX_BATCH",
    "outdial.v1.AddNumbersRequest.numbers": "OUTDIAL_DNC_MAX_BATCH",
    "outdial.v1.RemoveNumbersRequest.numbers": "OUTDIAL_DNC_MAX_BATCH",
}

# error_id of a refusal -> the ``limit`` label of outdial_limit_rejected_total.
LIMIT_ERROR_IDS: dict[str, str] = {
    "rate_limited": "rate",
    "too_many_streams": "streams",
    "too_many_uploads": "uploads",
    "too_many_items": "list_items",
    "batch_too_large": "batch",
    "line_too_long": "line",
    "file_too_large": "file_size",
    "too_many_columns": "columns",
}


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Message-size options of a gRPC server (the other options are the server module's)."""
    return [
        ("grpc.max_receive_message_length", settings.grpc_max_receive_bytes),
        ("grpc.max_send_message_length", 32 * MiB),
    ]


# ------------------------------------------------------------------------------------------- list sizes


def check_request(msg: Message, limit: int, path: str = "") -> None:
    """INVALID_ARGUMENT when a repeated or map field of ``msg`` (at any depth) holds more than ``limit``
    items (the fields of :data:`SERVICE_BOUNDED` are left to their service), when a Timestamp or a
    Duration in it is outside the range protobuf defines (converting it would raise in the handler), when
    an enum holds a value this build does not define, or when a string holds a NUL character (PostgreSQL
    text cannot). The error names the field."""
    for fd, value in msg.ListFields():
        name = f"{path}.{fd.name}" if path else fd.name
        if _is_repeated(fd):
            _check_repeated(fd, value, name, limit)
        else:
            _check_value(fd, value, name, limit)


def _check_repeated(fd: FieldDescriptor, value: Any, name: str, limit: int) -> None:
    if 0 < limit < len(value) and fd.full_name not in SERVICE_BOUNDED:
        raise InvalidArgument(
            f"{name} holds {len(value)} items; at most {limit} per request (OUTDIAL_LIMIT_LIST_ITEMS)",
            field=name,
            error_id="too_many_items",
        )
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        kfd = fd.message_type.fields_by_name["key"]
        vfd = fd.message_type.fields_by_name["value"]
        for k, v in value.items():
            _check_value(kfd, k, f"{name} key", limit)
            _check_value(vfd, v, f"{name}[{k}]", limit)
    else:
        for i, item in enumerate(value):
            _check_value(fd, item, f"{name}[{i}]", limit)


def _check_value(fd: FieldDescriptor, value: Any, name: str, limit: int) -> None:
    if fd.type == FieldDescriptor.TYPE_STRING:
        _check_text(value, name)
    elif fd.enum_type is not None:
        _check_enum(fd, value, name)
    elif fd.message_type is not None:
        kind = fd.message_type.full_name
        if kind == "google.protobuf.Timestamp":
            _check_time(value, name, TIMESTAMP_SECONDS, "a time between years 1 and 9999")
        elif kind == "google.protobuf.Duration":
            _check_time(value, name, DURATION_SECONDS, "a duration of at most 10,000 years")
        else:
            check_request(value, limit, name)


def _check_text(value: str, name: str) -> None:
    # PostgreSQL text cannot hold NUL, and no name, id or number of ours contains one: refuse it here
    # rather than as an error of the database in the middle of the handler.
    if "\x00" in value:
        raise InvalidArgument(f"{name} contains a NUL character", field=name, error_id="nul_in_text")


def _check_enum(fd: FieldDescriptor, number: int, name: str) -> None:
    # proto3 enums are open: a value this build does not know parses, and would reach the handler.
    assert fd.enum_type is not None
    if number not in fd.enum_type.values_by_number:
        raise InvalidArgument(
            f"{name} has the unknown value {number} (one of {', '.join(fd.enum_type.values_by_name)})",
            field=name,
            error_id="unknown_enum_value",
        )


# The ranges of the well-known types (google/protobuf/timestamp.proto, duration.proto).
TIMESTAMP_SECONDS = (-62_135_596_800, 253_402_300_799)
DURATION_SECONDS = (-315_576_000_000, 315_576_000_000)


def _check_time(value: Any, name: str, seconds: tuple[int, int], what: str) -> None:
    lo, hi = seconds
    ok = lo <= value.seconds <= hi and -1_000_000_000 < value.nanos < 1_000_000_000
    if seconds is TIMESTAMP_SECONDS:
        ok = ok and value.nanos >= 0
    else:  # a duration's nanos have the sign of its seconds
        ok = ok and not (value.seconds > 0 > value.nanos or value.seconds < 0 < value.nanos)
    if not ok:
        raise InvalidArgument(
            f"{name} is out of range (seconds={value.seconds}, nanos={value.nanos}): expected {what}",
            field=name,
            error_id="out_of_range",
        )


def _is_repeated(fd: FieldDescriptor) -> bool:
    return bool(fd.is_repeated)


def batch_limit(n: int, limit: int, field: str, setting: str) -> None:
    """INVALID_ARGUMENT when a batch of ``n`` items is over ``limit``."""
    if n > limit:
        raise InvalidArgument(
            f"{n} items in {field}; at most {limit} per request ({setting}): split the batch",
            field=field,
            error_id="batch_too_large",
        )


# ------------------------------------------------------------------------------------------- rates


@dataclass(frozen=True)
class Quota:
    streams: int  # open server streams at once (0 = no cap)
    uploads: int  # open client streams at once (0 = no cap)
    rate: float  # mutating RPCs per second (0 = no limit)
    burst: int  # bucket size


def quotas(settings: Settings) -> tuple[Quota, Quota]:
    """(people's quota, services' quota) from the settings."""
    return (
        Quota(settings.limit_streams, settings.limit_uploads, settings.limit_rate, settings.limit_burst),
        Quota(
            settings.limit_service_streams,
            settings.limit_service_uploads,
            settings.limit_service_rate,
            settings.limit_service_burst,
        ),
    )


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` a second; :meth:`take` answers 0 (taken) or the seconds
    until one is there."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.tokens = float(self.burst)
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def take(self, now: float) -> float:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


def _key(p: Principal) -> str:
    return f"{p.role.value}:{p.subject}"


def _role(p: Principal) -> str:
    return p.role.value


class Limits:
    """The per-principal caps and rates of one server process (state in memory: a limit per replica)."""

    # Buckets that are full again are forgotten once this many callers are tracked (memory stays bounded
    # by the callers active within a refill period).
    PRUNE_AT = 4096

    def __init__(self, service: str, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.service = service
        self.people, self.services = quotas(settings)
        self.list_items = settings.limit_list_items
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._open: dict[tuple[str, str], int] = {}

    def quota(self, p: Principal) -> Quota:
        return self.services if p.role is Role.SERVICE else self.people

    # -- rate (at admission, before the request is read)

    def admit(self, p: Principal, method: str) -> ResourceExhausted | None:
        """None, or the refusal of a mutating call over the caller's rate."""
        if method in READ_ONLY:
            return None
        q = self.quota(p)
        if q.rate <= 0:
            return None
        now = self.clock()
        key = _key(p)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.PRUNE_AT:
                self._prune(now)
            bucket = self._buckets[key] = TokenBucket(q.rate, q.burst, now)
        wait = bucket.take(now)
        if wait <= 0:
            return None
        LIMIT_REJECTED.labels(self.service, "rate", _role(p)).inc()
        setting = "OUTDIAL_LIMIT_SERVICE_RATE" if p.role is Role.SERVICE else "OUTDIAL_LIMIT_RATE"
        return ResourceExhausted(
            f"rate limit: {key} may make {q.rate:g} changing calls a second (bursts of {q.burst}; "
            f"{setting}); retry in {wait:.2f} s",
            error_id="rate_limited",
            retry_after_s=wait,
        )

    def _prune(self, now: float) -> None:
        for k in [k for k, b in self._buckets.items() if b.full(now)]:
            del self._buckets[k]

    # -- concurrency (while the call runs)

    @contextlib.contextmanager
    def slot(self, p: Principal, kind: str) -> Iterator[None]:
        """Hold one of the caller's ``kind`` ("streams" or "uploads") slots for the ``with`` block."""
        q = self.quota(p)
        cap = q.streams if kind == "streams" else q.uploads
        key = (_key(p), kind)
        n = self._open.get(key, 0)
        if cap > 0 and n >= cap:
            LIMIT_REJECTED.labels(self.service, kind, _role(p)).inc()
            svc = "SERVICE_" if p.role is Role.SERVICE else ""
            what = "streams" if kind == "streams" else "uploads"
            raise ResourceExhausted(
                f"too many concurrent {what}: {key[0]} has {n} open (at most {cap}; "
                f"OUTDIAL_LIMIT_{svc}{kind.upper()}); retry once one of them has ended",
                error_id=f"too_many_{kind}",
            )
        self._open[key] = n + 1
        LIMIT_OPEN.labels(self.service, kind).inc()
        try:
            yield
        finally:
            left = self._open[key] - 1
            if left:
                self._open[key] = left
            else:
                del self._open[key]
            LIMIT_OPEN.labels(self.service, kind).dec()

    def open_count(self, p: Principal, kind: str) -> int:
        return self._open.get((_key(p), kind), 0)

    # -- the handler around the servicer's behaviour

    def wrap(  # noqa: C901 - one wrapper per RPC kind, kept side by side (as the core interceptor)
        self, handler: grpc.RpcMethodHandler, principal: Principal | None
    ) -> grpc.RpcMethodHandler:
        """The same handler with the list limit on every request message, the concurrency caps on
        streams, and the limit refusals counted. ``principal`` is None only for public methods."""
        limit = self.list_items
        service = self.service
        role = principal.role.value if principal is not None else "-"
        deserializer = _tolerant(handler.request_deserializer)

        def check(msg: Any) -> None:
            if isinstance(msg, Malformed):
                raise InvalidArgument(
                    f"the request is not a valid {msg.type_name} message ({msg.problem})",
                    field="request",
                    error_id="malformed_request",
                )
            if isinstance(msg, Message):  # a handler without a deserializer gets bytes
                check_request(msg, limit)

        def counted(exc: OutdialError) -> None:
            label = LIMIT_ERROR_IDS.get(exc.error_id)
            # rate and concurrency refusals are counted where they are made
            if label is not None and label not in ("rate", "streams", "uploads"):
                LIMIT_REJECTED.labels(service, label, role).inc()

        def slot(kind: str) -> contextlib.AbstractContextManager[None]:
            return self.slot(principal, kind) if principal is not None else contextlib.nullcontext()

        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    check(request)
                    return await inner_uu(request, context)
                except OutdialError as exc:
                    counted(exc)
                    raise

            return grpc.unary_unary_rpc_method_handler(unary_unary, deserializer, handler.response_serializer)

        async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for msg in requests:
                check(msg)
                yield msg

        if handler.unary_stream:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    check(request)
                    with slot("streams"):
                        async for item in inner_us(request, context):
                            yield item
                except OutdialError as exc:
                    counted(exc)
                    raise

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            inner_su = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                try:
                    with slot("uploads"):
                        return await inner_su(checked(requests), context)
                except OutdialError as exc:
                    counted(exc)
                    raise

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, deserializer, handler.response_serializer
            )
        inner_ss = handler.stream_stream

        async def stream_stream(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            try:
                with slot("streams"):
                    async for item in inner_ss(checked(requests), context):
                        yield item
            except OutdialError as exc:
                counted(exc)
                raise

        return grpc.stream_stream_rpc_method_handler(stream_stream, deserializer, handler.response_serializer)


@dataclass(frozen=True)
class Malformed:
    """A request whose bytes are not a valid message: answered INVALID_ARGUMENT, never INTERNAL."""

    type_name: str
    problem: str


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)
    type_name = getattr(owner, "__name__", "request")

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return Malformed(type_name, str(exc) or "cannot be parsed")

    return parse


def refusal(handler: grpc.RpcMethodHandler, error: OutdialError) -> grpc.RpcMethodHandler:
    """A handler of the same kind that answers ``error`` without ever parsing the request: a refused
    caller's bytes are not deserialized (the message is still received, up to the 4 MiB limit)."""
    code, message = error.code, error.status_message()
    wait = error.details.get("retry_after_s")
    trailer = (("grpc-retry-pushback-ms", str(math.ceil(wait * 1000))),) if wait else None

    def skip(_data: bytes) -> bytes:
        return b""

    async def abort(context: grpc.aio.ServicerContext) -> None:
        if trailer is not None:
            context.set_trailing_metadata(trailer)
        await context.abort(code, message)

    async def uu(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort(context)

    async def us(_request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await abort(context)
        yield  # pragma: no cover - abort raises

    async def su(_requests: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort(context)

    async def ss(_requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await abort(context)
        yield  # pragma: no cover - abort raises

    ser = handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(uu, skip, ser)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(us, skip, ser)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(su, skip, ser)
    return grpc.stream_stream_rpc_method_handler(ss, skip, ser)
