"""Stored timestamps: fixed-width ISO-8601 UTC text that round-trips."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from lattice.store.clock import from_iso, iso, now_iso

_MOMENTS = st.datetimes(
    min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)


@given(_MOMENTS, st.integers(min_value=-14 * 60, max_value=14 * 60))
def test_iso_is_the_fixed_width_utc_text(moment: datetime, offset_minutes: int) -> None:
    local = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
    text = iso(local)
    assert text == f"{moment:%Y-%m-%dT%H:%M:%S.%f}Z"
    assert len(text) == 27
    assert from_iso(text) == moment


def test_now_iso_has_microseconds_even_on_a_whole_second() -> None:
    assert iso(datetime(2026, 1, 31, 12, 0, 0, tzinfo=UTC)) == "2026-01-31T12:00:00.000000Z"
    assert len(now_iso()) == 27
