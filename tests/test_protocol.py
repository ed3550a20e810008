"""Unit tests of event parsing and frame encoding."""

from __future__ import annotations

import json
import struct

import pytest

from liminal.errors import ProtocolError
from liminal.protocol import (
    ClientEvent,
    dumps,
    encode_event,
    parse_event,
    text_frame,
    utc_timestamp,
    valid_channel,
)


def test_parse_message_event() -> None:
    event = parse_event('{"type":"message","channel":"a:b/c","content":[1,{"x":2}],"id":"7"}')
    assert event == ClientEvent("message", "a:b/c", [1, {"x": 2}], "7")


@pytest.mark.parametrize("kind", ["subscribe", "unsubscribe"])
def test_parse_subscription_events(kind: str) -> None:
    assert parse_event(json.dumps({"type": kind, "channel": "room"})) == ClientEvent(
        kind, "room"
    )


@pytest.mark.parametrize(
    ("text", "event_id", "channel"),
    [
        ('{"type":"teleport","channel":"room","id":3}', 3, "room"),
        ('{"type":"message","channel":"room","id":"m"}', "m", "room"),
        ('{"type":"subscribe","channel":"bad name","id":1}', 1, None),
        ("[]", None, None),
    ],
)
def test_errors_carry_the_id_and_valid_channel(
    text: str, event_id: object, channel: object
) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_event(text)
    assert info.value.code == 4000
    assert info.value.event_id == event_id
    assert info.value.channel == channel


@pytest.mark.parametrize("bad_id", ["true", "1.5", "[1]", '"' + "x" * 129 + '"', str(2**63)])
def test_bad_ids_are_refused(bad_id: str) -> None:
    with pytest.raises(ProtocolError):
        parse_event('{"type":"subscribe","channel":"c","id":' + bad_id + "}")


def test_large_but_legal_integers_survive_a_round_trip() -> None:
    event = parse_event('{"type":"message","channel":"c","content":123456789012345678901234}')
    assert dumps(event.content) == b"123456789012345678901234"


def test_lone_surrogates_are_encoded_as_valid_json() -> None:
    event = parse_event('{"type":"message","channel":"c","content":"\\ud800"}')
    assert json.loads(dumps(event.content)) == "\ud800"


@pytest.mark.parametrize(
    "name,ok",
    [("a", True), ("x" * 128, True), ("user@host/a.b_c-d:e", True), ("", False),
     ("x" * 129, False), ("a b", False), ("ü", False), (5, False), (None, False)],
)
def test_channel_names(name: object, ok: bool) -> None:
    assert valid_channel(name) is ok


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_text_frame_header_lengths(size: int) -> None:
    frame = text_frame(b"x" * size)
    assert frame[0] == 0x81
    if size < 126:
        assert frame[1] == size and len(frame) == size + 2
    elif size < 65536:
        assert frame[1] == 126 and struct.unpack("!H", frame[2:4])[0] == size
    else:
        assert frame[1] == 127 and struct.unpack("!Q", frame[2:10])[0] == size


def test_encode_event_is_a_frame_of_compact_json() -> None:
    frame = encode_event({"type": "x", "n": 1})
    assert frame == b"\x81\x12" + b'{"type":"x","n":1}'


def test_timestamp_is_utc_with_z() -> None:
    stamp = utc_timestamp()
    assert stamp.endswith("Z") and "T" in stamp and len(stamp) == 24


@pytest.mark.parametrize(
    ("content", "ok"),
    [("-" + "9" * 100, True), ("-" + "9" * 101, False), ("1e-400", False),
     ("0.0", True), ("0e5", True), ("1E-400", False)],
)
def test_number_edges(content: str, ok: bool) -> None:
    text = '{"type":"message","channel":"c","content":' + content + "}"
    if ok:
        assert parse_event(text).content == json.loads(content)
    else:
        with pytest.raises(ProtocolError):
            parse_event(text)


@pytest.mark.parametrize("event_id", [-(2**63), 2**63 - 1])
def test_ids_span_the_signed_64_bit_range(event_id: int) -> None:
    assert parse_event(f'{{"type":"subscribe","channel":"c","id":{event_id}}}').id == event_id
