"""Every rule in lattice.core.names, plus a property test for static paths."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lattice.core.names import (
    check_bucket,
    check_key,
    check_listing_arg,
    check_static_path,
    is_plugin_bucket,
)
from lattice.errors import ValidationFailed

# -- buckets ------------------------------------------------------------------


@pytest.mark.parametrize(
    "bucket", ["b", "B9", "a" * 128, "plugin:com.example", "my-bucket_1.x", "0"]
)
def test_good_buckets(bucket: str) -> None:
    assert check_bucket(bucket) == bucket


@pytest.mark.parametrize(
    ("bucket", "match"),
    [
        ("", "must not be empty"),
        ("a" * 129, "at most 128 characters"),
        ("a\x00", "control characters"),
        ("a\x1f", "control characters"),
        ("a\x7f", "control characters"),
        ("a\x9b", "control characters"),
        ("a\ud800", "surrogate"),
        ("a..b", r"must not contain '\.\.'"),
        ("..", r"must not contain '\.\.'"),
        ("a\\b", "backslashes"),
        ("a/b", "may hold only"),
        ("a b", "may hold only"),
        ("a%b", "may hold only"),
        ("ä", "may hold only"),
        ("-a", "starting with a letter or digit"),
        (".a", "starting with a letter or digit"),
        (":a", "starting with a letter or digit"),
        ("a\n", "control characters"),
    ],
)
def test_bad_buckets_name_the_rule(bucket: str, match: str) -> None:
    with pytest.raises(ValidationFailed, match=match):
        check_bucket(bucket)


def test_plugin_buckets_are_reserved_case_insensitively() -> None:
    assert is_plugin_bucket("plugin:x")
    assert is_plugin_bucket("Plugin:x")
    assert is_plugin_bucket("PLUGIN:")
    assert not is_plugin_bucket("plugin")
    assert not is_plugin_bucket("plugins:x")
    assert not is_plugin_bucket("my-plugin:x")


# -- keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["k", "a/b/c", "/lead", "with space", "ключ", "\U0001f600", "a%_*", "k" * 512, "."]
)
def test_good_keys(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize(
    ("key", "match"),
    [
        ("", "must not be empty"),
        ("k" * 513, "at most 512 characters"),
        ("a\x00b", "control characters"),
        ("\x01", "control characters"),
        ("a\x7f", "control characters"),
        ("a\x85", "control characters"),
        ("\udc80", "surrogate"),
        ("a..b", r"must not contain '\.\.'"),
        ("../etc", r"must not contain '\.\.'"),
        ("a\\b", "backslashes"),
    ],
)
def test_bad_keys_name_the_rule(key: str, match: str) -> None:
    with pytest.raises(ValidationFailed, match=match):
        check_key(key)


# -- static paths ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["a", "a/b.css", "x/y/z/.hidden", "a..b", "...", "~u@h+1=2,3-4_5", "p" * 1024]
)
def test_good_paths(path: str) -> None:
    assert check_static_path(path) == path


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("", "must not be empty"),
        ("p" * 1025, "at most 1024 characters"),
        ("a\x00", "control characters"),
        ("a\tb", "control characters"),
        ("a\\b", "backslashes"),
        ("/abs", "relative"),
        ("//abs", "relative"),
        ("..", "'.' or '..' segments"),
        ("a/../b", "'.' or '..' segments"),
        ("./a", "'.' or '..' segments"),
        ("a//b", "empty"),
        ("a/", "empty"),
        ("a b", "may hold only"),
        ("a%2e", "may hold only"),
        ("é", "may hold only"),
        ("a:b", "may hold only"),
        ("\ud800", "surrogate"),
    ],
)
def test_bad_paths_name_the_rule(path: str, match: str) -> None:
    with pytest.raises(ValidationFailed, match=match):
        check_static_path(path)


def test_segment_rule_reports_the_segment() -> None:
    with pytest.raises(ValidationFailed) as info:
        check_static_path("ok/bad seg/ok")
    assert info.value.detail == {"segment": "bad seg"}


# -- listing arguments -------------------------------------------------------------------


def test_listing_args() -> None:
    assert check_listing_arg("cursor", "abc", max_len=3) == "abc"
    assert check_listing_arg("prefix", "", max_len=3) == ""
    with pytest.raises(ValidationFailed, match="cursor must be at most 3"):
        check_listing_arg("cursor", "abcd", max_len=3)
    with pytest.raises(ValidationFailed, match="prefix must not contain control"):
        check_listing_arg("prefix", "\x00", max_len=3)
    with pytest.raises(ValidationFailed, match="surrogate"):
        check_listing_arg("prefix", "\udfff", max_len=3)


# -- property: a path that passes is safe to join under a root ---------------------------

_pieces = st.sampled_from(["..", ".", "/", "\\", "\x00", "a", "b.c", "%2e", "~", "-", " ", "é"])
_paths = st.one_of(
    st.text(max_size=40),
    st.lists(_pieces, max_size=12).map("".join),
)


@settings(max_examples=1000, deadline=None)
@given(_paths)
def test_check_static_path_accepts_only_safe_paths(path: str) -> None:
    try:
        result = check_static_path(path)
    except ValidationFailed:
        return
    assert result == path
    assert ".." not in result.split("/")
    assert "." not in result.split("/")
    assert not result.startswith("/")
    assert "\\" not in result
    assert "\x00" not in result
    assert all(0x20 < ord(ch) < 0x7F for ch in result)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=600))
def test_check_key_accepts_no_dotdot_or_controls(key: str) -> None:
    try:
        check_key(key)
    except ValidationFailed:
        return
    assert key and ".." not in key and "\\" not in key and len(key) <= 512
    assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in key)
