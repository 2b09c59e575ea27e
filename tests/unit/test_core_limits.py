"""Input and load limits (core/limits.py): token buckets, concurrency slots, list sizes, the registry
line parser and the CSV stream's limits (pure: no servers)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from outdial.campaign.csvstream import CsvStream, FileTooLarge, LineTooLong, MalformedFile, iter_records
from outdial.core.auth import PERMISSIONS, Principal, Role
from outdial.core.config import Settings
from outdial.core.errors import InvalidArgument, ResourceExhausted
from outdial.core.limits import (
    READ_ONLY,
    SERVICE_BOUNDED,
    Limits,
    TokenBucket,
    batch_limit,
    check_request,
)
from outdial.dnc.engine import ImportResult, _LineParser
from outdial.v1 import agent_pb2, campaign_pb2, dnc_pb2, gateway_pb2, pacing_pb2

MANAGER = Principal("mia", Role.MANAGER)
PACING = Principal("svc:pacing:p1", Role.SERVICE)
MUTATING = "/outdial.v1.DncService/AddNumbers"


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def limits(clock: FakeClock, **kw: Any) -> Limits:
    return Limits("test", Settings.model_construct(**kw), clock=clock)


def test_a_bucket_gives_its_burst_then_its_rate() -> None:
    b = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [b.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take(0.0) == pytest.approx(0.5)
    assert b.take(0.5) == 0.0  # one token came back in half a second
    assert b.take(0.5) > 0
    assert b.full(10.0)


def test_a_person_over_the_rate_is_refused_with_the_limit_and_when_to_retry() -> None:
    clock = FakeClock()
    lim = limits(clock, limit_rate=1.0, limit_burst=2)
    assert lim.admit(MANAGER, MUTATING) is None
    assert lim.admit(MANAGER, MUTATING) is None
    err = lim.admit(MANAGER, MUTATING)
    assert isinstance(err, ResourceExhausted)
    assert err.error_id == "rate_limited"
    assert "OUTDIAL_LIMIT_RATE" in err.message and "retry in 1.00 s" in err.message
    assert err.details["retry_after_s"] == pytest.approx(1.0)
    # read-only RPCs are not rate limited; another person has their own bucket
    assert lim.admit(MANAGER, "/outdial.v1.DncService/QueryAudit") is None
    assert lim.admit(Principal("other", Role.MANAGER), MUTATING) is None
    clock.t += 1.0
    assert lim.admit(MANAGER, MUTATING) is None


def test_services_have_their_own_generous_quota() -> None:
    clock = FakeClock()
    lim = limits(clock, limit_rate=1.0, limit_burst=1)
    # The dialer at a pace far above any real campaign (1,000 OfferCall + 1,000 CheckNumbers in a second).
    for _ in range(1000):
        assert lim.admit(PACING, "/outdial.v1.AgentService/OfferCall") is None
        assert lim.admit(PACING, "/outdial.v1.DncService/CheckNumbers") is None
    lim = limits(clock, limit_service_rate=1.0, limit_service_burst=1)
    assert lim.admit(PACING, MUTATING) is None
    err = lim.admit(PACING, MUTATING)
    assert err is not None and "OUTDIAL_LIMIT_SERVICE_RATE" in err.message


def test_a_rate_of_zero_means_no_limit() -> None:
    lim = limits(FakeClock(), limit_rate=0.0, limit_burst=1)
    assert all(lim.admit(MANAGER, MUTATING) is None for _ in range(100))


def test_idle_buckets_are_forgotten_so_memory_stays_bounded() -> None:
    clock = FakeClock()
    lim = limits(clock, limit_rate=10.0, limit_burst=5)
    lim.PRUNE_AT = 100
    for i in range(1000):
        lim.admit(Principal(f"p{i}", Role.AGENT), MUTATING)
        clock.t += 1.0  # each bucket is full again a second later
    assert len(lim._buckets) <= 100


def test_concurrency_slots_are_capped_per_caller_and_given_back() -> None:
    lim = limits(FakeClock(), limit_streams=2, limit_uploads=1)
    with lim.slot(MANAGER, "streams"), lim.slot(MANAGER, "streams"):
        with pytest.raises(ResourceExhausted, match=r"at most 2; OUTDIAL_LIMIT_STREAMS") as err:
            with lim.slot(MANAGER, "streams"):
                pass
        assert err.value.error_id == "too_many_streams"
        with lim.slot(Principal("other", Role.MANAGER), "streams"):
            pass
        with lim.slot(MANAGER, "uploads"):
            with pytest.raises(ResourceExhausted, match="OUTDIAL_LIMIT_UPLOADS"):
                with lim.slot(MANAGER, "uploads"):
                    pass
    assert lim.open_count(MANAGER, "streams") == 0 and lim._open == {}
    with pytest.raises(RuntimeError):  # released on errors too
        with lim.slot(MANAGER, "uploads"):
            raise RuntimeError
    assert lim.open_count(MANAGER, "uploads") == 0


def test_every_rpc_is_classified_and_read_only_names_exist() -> None:
    assert READ_ONLY <= set(PERMISSIONS)
    for m in READ_ONLY:
        assert m.rsplit("/", 1)[1].startswith(
            ("Get", "List", "Query", "Verify", "Explain", "Watch", "Stream", "Connect")
        )


def test_list_limit_names_the_field_and_the_limit_at_any_depth() -> None:
    req = campaign_pb2.CreateCampaignRequest(
        campaign=campaign_pb2.Campaign(dispositions=["a", "b", "c", "d"])
    )
    with pytest.raises(InvalidArgument) as err:
        check_request(req, 3)
    assert err.value.field == "campaign.dispositions"
    assert err.value.error_id == "too_many_items"
    assert "at most 3" in err.value.message and "OUTDIAL_LIMIT_LIST_ITEMS" in err.value.message
    check_request(req, 4)
    offer = agent_pb2.OfferCallRequest(lead_fields={str(i): "x" for i in range(5)})
    with pytest.raises(InvalidArgument, match=r"lead_fields holds 5 items"):
        check_request(offer, 4)


def test_dnc_number_batches_are_left_to_max_batch() -> None:
    req = dnc_pb2.CheckNumbersRequest(numbers=["+12025550123"] * 50, call_ids=["c"] * 50)
    check_request(req, 10)  # bounded by OUTDIAL_DNC_MAX_BATCH in the DNC service, not here
    for name in SERVICE_BOUNDED:
        msg, field = name.removeprefix("outdial.v1.").split(".")
        assert field in getattr(dnc_pb2, msg).DESCRIPTOR.fields_by_name
    with pytest.raises(InvalidArgument, match=r"10001 items in numbers; at most 10000") as err:
        batch_limit(10_001, 10_000, "numbers", "OUTDIAL_DNC_MAX_BATCH")
    assert err.value.error_id == "batch_too_large"


def _request_types() -> list[type[Message]]:
    out: list[type[Message]] = []
    for mod in (agent_pb2, campaign_pb2, dnc_pb2, gateway_pb2, pacing_pb2):
        for svc in mod.DESCRIPTOR.services_by_name.values():
            for m in svc.methods:
                out.append(getattr(mod, m.input_type.name))
    return out


def _overfill(msg: Message, name: str, n: int) -> None:
    fd = msg.DESCRIPTOR.fields_by_name[name]
    box = getattr(msg, name)
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        vfd = fd.message_type.fields_by_name["value"]
        for i in range(n):
            if vfd.message_type is not None:
                box[str(i)].SetInParent()
            else:
                box[str(i)] = "v" if vfd.type == vfd.TYPE_STRING else 1
    elif fd.message_type is not None:
        for _ in range(n):
            box.add()
    elif fd.type == fd.TYPE_STRING:
        box.extend(["x"] * n)
    else:
        box.extend([1] * n)


def test_every_repeated_field_of_every_request_is_bounded() -> None:
    seen = 0
    for cls in _request_types():
        for fd in cls.DESCRIPTOR.fields:
            if not fd.is_repeated:
                continue
            msg = cls()
            _overfill(msg, fd.name, 4)
            if fd.full_name in SERVICE_BOUNDED:
                check_request(msg, 3)
                continue
            seen += 1
            with pytest.raises(InvalidArgument) as err:
                check_request(msg, 3)
            assert err.value.field == fd.name, fd.full_name
    assert seen >= 8  # skills, campaigns, required_skills, lead_fields, states, column_mapping, …


# ------------------------------------------------------------------------------------- registry lines


def test_registry_lines_longer_than_the_limit_are_refused_with_their_number() -> None:
    p = _LineParser(ImportResult("national:US"), "full", "US", max_line=16)
    assert p.block(b"2025550123\n\n2025550124\n") == [("+", "+12025550123"), ("+", "+12025550124")]
    with pytest.raises(InvalidArgument, match=r"line 5 of the registry file is longer than 16 bytes") as err:
        p.block(b"2025550125\n" + b"9" * 17 + b"\n")
    assert err.value.error_id == "line_too_long"
    p.check_tail(16)
    with pytest.raises(InvalidArgument, match="OUTDIAL_DNC_IMPORT_MAX_LINE_BYTES"):
        p.check_tail(17)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=400))
def test_registry_blocks_of_any_bytes_parse_or_refuse_cleanly(data: bytes) -> None:
    p = _LineParser(ImportResult("national:US"), "changes", "US", max_line=64)
    try:
        rows = p.block(data)
    except InvalidArgument as exc:
        assert exc.error_id == "line_too_long"
        return
    assert all(op in "+-" and e.startswith("+") for op, e in rows)


# ------------------------------------------------------------------------------------- CSV stream

CSV = (
    b'phone,first_name,notes\n2125550100,Ann,"two\nlines"\n'
    b"2125550101,Bob,plain\r\n2125550102,\xc3\x89mile,caf\xc3\xa9\n"
)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(CSV)), max_size=12))
def test_csv_records_do_not_depend_on_chunk_boundaries(cuts: list[int]) -> None:
    points = [0, *sorted(set(cuts)), len(CSV)]
    s = CsvStream(max_bytes=10_000, max_line=100)
    got: list[list[str]] = []
    for a, b in itertools.pairwise(points):
        got += s.feed(CSV[a:b])
    got += s.finish()
    assert got == list(iter_records(CSV))
    assert got[1] == ["2125550100", "Ann", "two\nlines"]


def test_a_line_without_newline_in_tiny_chunks_is_refused_at_the_limit() -> None:
    s = CsvStream(max_bytes=1 << 30, max_line=1000)
    s.feed(b"phone\n")
    with pytest.raises(LineTooLong, match="line 2 is longer than 1000 bytes"):
        for _ in range(2000):
            s.feed(b"9")
    # the unfinished line held in memory never exceeded the limit by more than one chunk
    assert len(s._raw) <= 1001


def test_a_4_mib_line_in_16_byte_chunks_costs_linear_work() -> None:
    # 262,144 chunks. Joining the unfinished line to each new chunk (as before) copies ~512 GB: about
    # ten minutes, so the test's timeout fails it (a 1 MiB line took 39 s); a bytearray copies each byte
    # once (a fraction of a second).
    s = CsvStream(max_bytes=1 << 30, max_line=4 << 20)
    s.feed(b"phone\n")
    piece = b"2" * 16
    with pytest.raises(LineTooLong):
        for _ in range((4 << 20) // 16 + 1):
            s.feed(piece)


def test_a_file_over_the_size_limit_is_refused() -> None:
    s = CsvStream(max_bytes=10, max_line=100)
    s.feed(b"phone\n")
    with pytest.raises(FileTooLarge):
        s.feed(b"212555")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=64))
def test_malformed_csv_bytes_give_records_or_a_clear_error(data: bytes, chunk: int) -> None:
    s = CsvStream(max_bytes=250, max_line=40)
    try:
        for i in range(0, len(data), chunk):
            s.feed(data[i : i + chunk])
        s.finish()
    except MalformedFile as exc:
        assert str(exc)


def test_timestamps_and_durations_out_of_range_are_refused_naming_the_field() -> None:
    req = dnc_pb2.QueryAuditRequest()
    req.since.seconds = 10**15
    with pytest.raises(InvalidArgument, match=r"since is out of range") as err:
        check_request(req, 1000)
    assert (err.value.field, err.value.error_id) == ("since", "out_of_range")
    req.since.seconds, req.since.nanos = 0, -1
    with pytest.raises(InvalidArgument):
        check_request(req, 1000)
    req.since.nanos = 999_999_999
    check_request(req, 1000)
    offer = agent_pb2.OfferCallRequest()
    offer.deadline.seconds, offer.deadline.nanos = 1, -5
    with pytest.raises(InvalidArgument, match="deadline is out of range"):
        check_request(offer, 1000)
    offer.deadline.seconds, offer.deadline.nanos = -1, -5
    check_request(offer, 1000)
    nested = campaign_pb2.UpdateCampaignRequest()
    nested.campaign.scheduled_start.seconds = -(2**62)
    with pytest.raises(InvalidArgument) as err:
        check_request(nested, 1000)
    assert err.value.field == "campaign.scheduled_start"


def test_the_cli_explains_a_refused_upload_that_grpc_aio_reports_as_internal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import grpc

    from outdial.cli.base import rpc_error

    lost = grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(), details="Internal error from Core"
    )
    assert rpc_error(lost) == 1
    assert "Nothing of it was kept" in " ".join(capsys.readouterr().err.split())
    other = grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details="internal error (request id x)",
    )
    rpc_error(other)
    assert "Nothing of it was kept" not in " ".join(capsys.readouterr().err.split())


async def test_large_dnc_batches_are_parsed_off_the_event_loop_and_bounded() -> None:
    import threading

    from outdial.dnc.engine import INLINE_PARSE, DncEngine
    from outdial.dnc.settings import DncSettings

    engine = DncEngine.__new__(DncEngine)  # parse_batch needs neither PostgreSQL nor Redis
    engine.settings = DncSettings(max_batch=1000)
    threads: list[int] = []
    real = engine.normalise_many

    def spy(raw: Any, jurisdiction: str = "") -> tuple[list[str], list[str]]:
        threads.append(threading.get_ident())
        return real(raw, jurisdiction)

    engine.normalise_many = spy  # type: ignore[method-assign]
    small = [f"(202) 555-{i:04d}" for i in range(INLINE_PARSE)]
    big = [f"(202) 555-{i:04d}" for i in range(1000)]
    ok, bad = await engine.parse_batch(small)
    assert (len(ok), bad) == (INLINE_PARSE, []) and threads[-1] == threading.get_ident()
    ok, bad = await engine.parse_batch(big)
    assert (len(ok), bad) == (1000, []) and threads[-1] != threading.get_ident()
    with pytest.raises(InvalidArgument, match=r"1001 items in numbers; at most 1000") as err:
        await engine.parse_batch([*big, "+12025550199"])
    assert err.value.field == "numbers"


def test_nul_characters_and_unknown_enum_values_are_refused_naming_the_field() -> None:
    with pytest.raises(InvalidArgument, match="campaign_id contains a NUL character") as err:
        check_request(pacing_pb2.GetPacingStateRequest(campaign_id="c\x001"), 1000)
    assert err.value.error_id == "nul_in_text"
    with pytest.raises(InvalidArgument) as err:
        check_request(campaign_pb2.UploadLeadsHeader(column_mapping={"phone": "tel\x00"}), 1000)
    assert err.value.field == "column_mapping[phone]"
    with pytest.raises(InvalidArgument) as err:
        check_request(dnc_pb2.CheckNumbersRequest(numbers=["+12025550123", "\x00"]), 1000)
    assert err.value.field == "numbers[1]"
    with pytest.raises(InvalidArgument, match=r"states\[1\] has the unknown value 99") as err:
        check_request(campaign_pb2.ListCampaignsRequest(states=[1, 99]), 1000)
    assert err.value.error_id == "unknown_enum_value"
    with pytest.raises(InvalidArgument, match="list_kind has the unknown value -1"):
        check_request(dnc_pb2.AddNumbersRequest(list_kind=-1), 1000)  # type: ignore[arg-type]
    check_request(campaign_pb2.ListCampaignsRequest(states=[1, 2]), 1000)
