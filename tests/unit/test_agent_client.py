"""The console's reconnection policy (pure parts of outdial.agent.client)."""

from __future__ import annotations

import random

import grpc
from hypothesis import given
from hypothesis import strategies as st

from outdial.agent.client import RETRYABLE, Backoff, error_id


@given(st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=2**32))
def test_full_jitter_stays_under_the_exponential_ceiling_and_the_cap(attempt: int, seed: int) -> None:
    b = Backoff(base_s=0.1, cap_s=1.0)
    d = b.delay(attempt, random.Random(seed))
    assert 0.0 <= d <= min(1.0, 0.1 * 2**attempt)


def test_backoff_grows_then_is_capped_and_is_spread() -> None:
    b = Backoff(base_s=0.1, cap_s=1.0)
    rng = random.Random(7)
    first = [b.delay(0, rng) for _ in range(2000)]
    late = [b.delay(12, rng) for _ in range(2000)]
    assert max(first) <= 0.1 < max(late) <= 1.0
    # Jitter: consoles that failed together do not retry together (spread over the whole interval).
    assert min(late) < 0.1 and max(late) > 0.9
    assert 0.4 < sum(late) / len(late) < 0.6


class _Err(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def test_error_id_reads_the_stable_id_of_an_outdial_status() -> None:
    assert error_id(_Err(grpc.StatusCode.FAILED_PRECONDITION, "not_logged_in: agent a is not logged in")) == (
        "not_logged_in"
    )
    assert (
        error_id(_Err(grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument [field]: bad"))
        == "invalid_argument"
    )
    assert error_id(_Err(grpc.StatusCode.UNAVAILABLE, "")) == ""


def test_only_transient_faults_are_retried() -> None:
    assert grpc.StatusCode.UNAVAILABLE in RETRYABLE
    for fatal in (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
    ):
        assert fatal not in RETRYABLE
