"""Validation shared by both graph stores, and generated ids."""

from __future__ import annotations

from typing import Any

import pytest

from liminal.store import (
    check_node_id,
    check_node_type,
    check_properties,
    check_relationship_type,
    new_relationship_id,
)


@pytest.mark.parametrize("value", ["user", "device", "a", "x_1", "a" * 64])
def test_valid_node_types_pass(value: str) -> None:
    assert check_node_type(value) == value


@pytest.mark.parametrize(
    "value", ["", "User", "1a", "_a", "a-b", "a b", "a" * 65, "user)", "relationship"]
)
def test_invalid_node_types_fail(value: str) -> None:
    with pytest.raises(ValueError, match="node type"):
        check_node_type(value)


@pytest.mark.parametrize("value", ["KNOWS", "A", "OWNS_2", "A" * 64])
def test_valid_relationship_types_pass(value: str) -> None:
    assert check_relationship_type(value) == value


@pytest.mark.parametrize(
    "value",
    ["", "knows", "_A", "2A", "A-B", "A" * 65, "KNOWS]->(x) DETACH DELETE x //"],
)
def test_invalid_relationship_types_fail(value: str) -> None:
    with pytest.raises(ValueError, match="relationship type"):
        check_relationship_type(value)


@pytest.mark.parametrize("value", ["a", "x" * 128, "a b", "ünï 🙂", "'; --", "{}/"])
def test_printable_ids_pass(value: str) -> None:
    assert check_node_id(value) == value


@pytest.mark.parametrize("value", ["", "x" * 129, "a\tb", "a\nb", "a\x00", "\u200b"])
def test_other_ids_fail(value: str) -> None:
    with pytest.raises(ValueError, match="printable"):
        check_node_id(value)


def test_storable_properties_pass() -> None:
    properties = {
        "s": "text",
        "i": 2**63 - 1,
        "f": -0.5,
        "b": False,
        "ls": ["a"],
        "li": [1, 2],
        "lf": [1.0],
        "lb": [True],
        "empty": [],
        "_under": 1,
        "created_at": "kept",
    }
    assert check_properties(properties) == properties


@pytest.mark.parametrize(
    ("properties", "message"),
    [
        ({"": 1}, "property key ''"),
        ({"a-b": 1}, "property key 'a-b'"),
        ({"a" * 65: 1}, "must match"),
        ({"id": "x"}, "'id' is reserved"),
        ({"n": None}, "property 'n'"),
        ({"o": {"a": 1}}, "property 'o'"),
        ({"l": [None]}, "property 'l'"),
        ({"l": [[1]]}, "property 'l'"),
        ({"m": [1, "1"]}, "same type"),
        ({"m": [1, 1.0]}, "same type"),
        ({"m": [True, 1]}, "same type"),
        ({"big": -(2**63) - 1}, "64 bits"),
        ({"inf": float("inf")}, "finite"),
        ({"nan": [float("nan")]}, "finite"),
        ({"nul": "\x00"}, "NUL"),
    ],
)
def test_unstorable_properties_fail_naming_the_key(
    properties: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check_properties(properties)


def test_relationship_ids_are_unique_and_sort_by_creation() -> None:
    ids = [new_relationship_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert [i[:14] for i in ids] == sorted(i[:14] for i in ids)
