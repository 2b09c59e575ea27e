"""The NG wire format (bencode), the DTMF log's datagrams and the SDP bits of outdial.gateway.rtpengine."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outdial.gateway.rtpengine import (
    BencodeError,
    BValue,
    Media,
    bdecode,
    bencode,
    dtmf_digit,
    parse_dtmf_datagram,
    placeholder_sdp,
    sdp_audio_codec,
    sdp_audio_port,
)

values: st.SearchStrategy[BValue] = st.recursive(
    st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@given(values)
def test_round_trip(value: BValue) -> None:
    assert bdecode(bencode(value)) == value


def test_known_encodings_and_key_order() -> None:
    assert bencode({"sdp": "v=0", "command": "offer", "flags": ["a", "b"], "n": -3}) == (
        b"d7:command5:offer5:flagsl1:a1:be1:ni-3e3:sdp3:v=0e"
    )
    assert bencode("é") == b"2:\xc3\xa9"
    # rtpengine's replies are not sorted: decoding accepts any key order
    assert bdecode(b"d6:result2:ok5:callsl3:c-1ee") == {"result": "ok", "calls": ["c-1"]}


def test_non_utf8_strings_stay_bytes() -> None:
    assert bdecode(b"2:\xff\xfe") == b"\xff\xfe"
    assert bdecode(bencode(b"\xff\x00")) == b"\xff\x00"


@pytest.mark.parametrize(
    "bad", [b"", b"i01e", b"i-0e", b"ie", b"5:abc", b"l", b"d1:a", b"i1ei2e", b"x", b"d2:\xff\xfei1ee"]
)
def test_malformed_input_is_rejected(bad: bytes) -> None:
    with pytest.raises(BencodeError):
        bdecode(bad)


def test_booleans_are_refused() -> None:
    with pytest.raises(BencodeError):
        bencode(True)


def test_dtmf_events_map_to_keys() -> None:
    assert [dtmf_digit(e) for e in range(16)] == list("0123456789*#ABCD")
    assert dtmf_digit(16) is None
    datagram = (
        b'{"callid":"c-42","source_tag":"c-42","tags":["ci-42","c-42"],"type":"DTMF",'
        b'"timestamp":1796076859,"source_ip":"127.0.0.1","event":11,"duration":80,"volume":10}'
    )
    event = parse_dtmf_datagram(datagram)
    assert event is not None
    assert (event.call_id, event.source_tag, event.digit, event.duration_ms) == ("c-42", "c-42", "#", 80)
    assert parse_dtmf_datagram(b"not json") is None
    assert parse_dtmf_datagram(b'{"callid":"c-1","source_tag":"c-1","event":99}') is None


def test_who_pressed_from_the_tag() -> None:
    assert Media.who("c-42") == ("customer", "42")
    assert Media.who("a-agent7-1") == ("agent", "agent7-1")
    # the same digit seen again where it crosses a bridge is not a second key press
    assert Media.who("ci-42") is None
    assert Media.who("ai-agent7-1") is None


def test_sdp_helpers() -> None:
    answer = (
        "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 30000 RTP/AVP 101 0\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=rtpmap:0 PCMU/8000\r\n"
    )
    assert sdp_audio_port(answer) == 30000
    assert sdp_audio_codec(answer) == "PCMU"
    assert sdp_audio_codec("m=audio 4000 RTP/AVP 8\r\n") == "PCMA"  # static payload type, no rtpmap
    offer = placeholder_sdp("127.0.0.1", 41500)
    assert sdp_audio_port(offer) == 41500 and sdp_audio_codec(offer) == "PCMA"
    assert "telephone-event/8000" in offer
