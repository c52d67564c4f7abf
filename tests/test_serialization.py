from __future__ import annotations

import threading
from typing import Any

import pytest

from afterwork import Afterwork, ConfigurationError, SerializationError
from afterwork.serialization import (
    JSONSerializer,
    PickleSerializer,
    decode_arguments,
    encode_arguments,
    serializer_for,
)


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (other.x, other.y) == (self.x, self.y)

    def __hash__(self) -> int:
        return hash((self.x, self.y))


def test_json_is_the_default_codec() -> None:
    assert Afterwork("memory://").serializer.name == "json"


def test_plain_data_crosses_the_json_codec_unchanged() -> None:
    codec = JSONSerializer()
    value = {"id": 42, "name": "Zoë", "ok": True, "none": None, "ratio": 0.5, "tags": ["a", "b"]}
    assert codec.loads(codec.dumps(value)) == value


def test_arguments_round_trip_as_positional_and_keyword_arguments() -> None:
    codec = JSONSerializer()
    payload = encode_arguments(codec, "app.send", (1, "two", [3]), {"four": {"five": 5}})
    assert decode_arguments(codec, payload) == ((1, "two", [3]), {"four": {"five": 5}})


def test_an_object_json_cannot_carry_is_refused_naming_the_task_and_the_argument() -> None:
    codec = JSONSerializer()
    with pytest.raises(SerializationError) as excinfo:
        encode_arguments(codec, "app.send", (1, Point(1, 2)), {})
    message = str(excinfo.value)
    assert "app.send" in message
    assert "#1 (Point)" in message
    # ... and says what to do instead.
    assert "id" in message
    assert "pickle" in message


def test_a_keyword_argument_json_cannot_carry_is_named_by_its_keyword() -> None:
    with pytest.raises(SerializationError, match=r"'lock' \(lock\)"):
        encode_arguments(JSONSerializer(), "app.send", (1,), {"lock": threading.Lock()})


def test_a_serialization_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="cannot enqueue"):
        encode_arguments(JSONSerializer(), "app.send", (object(),), {})


def test_pickle_carries_any_picklable_object_when_asked_for_by_name() -> None:
    codec = serializer_for("pickle")
    assert isinstance(codec, PickleSerializer)
    payload = encode_arguments(codec, "app.move", (Point(1, 2),), {"to": {Point(3, 4)}})
    assert decode_arguments(codec, payload) == ((Point(1, 2),), {"to": {Point(3, 4)}})


def test_pickle_still_refuses_what_cannot_be_pickled_naming_the_argument() -> None:
    with pytest.raises(SerializationError, match=r"app.move: argument #0 \(lock\)"):
        encode_arguments(PickleSerializer(), "app.move", (threading.Lock(),), {})


def test_an_unknown_codec_name_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"'yaml'.*'json'.*'pickle'"):
        Afterwork("memory://", serializer="yaml")


def test_a_codec_object_can_be_given_instead_of_a_name() -> None:
    class Upper:
        name = "upper-json"

        def __init__(self) -> None:
            self.inner = JSONSerializer()

        def dumps(self, value: Any) -> bytes:
            return self.inner.dumps(value)

        def loads(self, data: bytes) -> Any:
            return self.inner.loads(data)

    codec = Upper()
    assert Afterwork("memory://", serializer=codec).serializer is codec


@pytest.mark.parametrize("payload", [b"\x00\xffgarbage", b"", b"{not json"])
def test_a_payload_that_does_not_decode_raises_a_serialization_error(payload: bytes) -> None:
    with pytest.raises(SerializationError, match="does not decode as json"):
        decode_arguments(JSONSerializer(), payload)


@pytest.mark.parametrize("payload", [b"[1, 2, 3]", b'{"a": 1}', b"[[1], [2]]", b"[{}, {}]", b"3"])
def test_a_payload_that_is_not_an_args_kwargs_pair_is_refused(payload: bytes) -> None:
    with pytest.raises(SerializationError, match=r"not an \[args, kwargs\] pair"):
        decode_arguments(JSONSerializer(), payload)
