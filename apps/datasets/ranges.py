"""Ranges `[range_start, range_end)` typed by the dataset's `range_type` (D2)."""

from __future__ import annotations

import datetime as dt

from apps.orgs.errors import FieldError, ValidationFailed


def parse_timestamp(value: object, path: str) -> dt.datetime:
    """An RFC 3339 timestamp with a time zone, or a 400 naming `path`."""
    if not isinstance(value, str):
        raise ValidationFailed.field(path, "must be an RFC 3339 timestamp string")
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationFailed.field(path, f"{value!r} is not an RFC 3339 timestamp") from None
    if moment.tzinfo is None:
        raise ValidationFailed.field(path, f"{value!r} has no time zone (add Z or +00:00)")
    return moment


def _parse(range_type: str, value: object, path: str) -> tuple[object, str]:
    """The comparable value and its canonical text."""
    if range_type == "int":
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValidationFailed.field(path, "must be an integer")
        try:
            number = int(value)
        except ValueError:
            raise ValidationFailed.field(path, f"{value!r} is not an integer") from None
        return number, str(number)
    if range_type == "timestamp":
        moment = parse_timestamp(value, path).astimezone(dt.UTC)
        return moment, moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if not isinstance(value, str):
        raise ValidationFailed.field(path, "must be a string")
    return value, value


def canonical_range(
    range_type: str, start: object, end: object, prefix: str = ""
) -> tuple[str, str]:
    """Both ends in canonical text; a 400 naming the field when either is bad or start ≥ end.

    A range may be omitted entirely (both None): the event then covers no particular range.
    """
    if start is None and end is None:
        return "", ""
    errors: list[FieldError] = []
    if start is None or end is None:
        missing = "range_end" if end is None else "range_start"
        raise ValidationFailed.field(
            f"{prefix}{missing}", "give both ends of the range, or neither"
        )
    start_value, start_text = _parse(range_type, start, f"{prefix}range_start")
    end_value, end_text = _parse(range_type, end, f"{prefix}range_end")
    if not start_value < end_value:  # type: ignore[operator]
        errors.append(
            FieldError(f"{prefix}range_start", f"must be before range_end ({start!r} ≥ {end!r})")
        )
        raise ValidationFailed(errors[0].message, errors=errors)
    return start_text, end_text
