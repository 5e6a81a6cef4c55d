"""UTC calendar arithmetic without a clock library (node/core may not import datetime or time).

Why our own: proposal ids and history timestamps are computed from a `now_ms` parameter, and must be
the same on every node; H. Hinnant's civil_from_days is exact for the proleptic Gregorian calendar.
"""

from __future__ import annotations

_MS_PER_DAY = 86_400_000


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day count since 1970-01-01 (H. Hinnant's algorithm; no datetime here)."""
    shifted = days + 719_468
    era = shifted // 146_097
    day_of_era = shifted - era * 146_097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    month_index = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * month_index + 2) // 5 + 1
    month = month_index + 3 if month_index < 10 else month_index - 9
    return year_of_era + era * 400 + (month <= 2), month, day


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Day count since 1970-01-01 of a (year, month, day) (H. Hinnant's days_from_civil)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146_097 + day_of_era - 719_468


def utc_ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    """Unix milliseconds of a UTC date and time (the inverse of utc_parts, to the second)."""
    return _days_from_civil(year, month, day) * _MS_PER_DAY + ((hour * 60 + minute) * 60 + second) * 1000


def utc_parts(now_ms: int) -> tuple[int, int, int, int, int, int]:
    """(year, month, day, hour, minute, second) in UTC of a Unix time in milliseconds."""
    days, ms_of_day = divmod(now_ms, _MS_PER_DAY)
    seconds = ms_of_day // 1000
    return (*_civil_from_days(days), seconds // 3600, seconds // 60 % 60, seconds % 60)


def format_utc_ms(now_ms: int) -> str:
    """ISO 8601 UTC with seconds, e.g. '2025-10-03T12:00:00Z' (for messages users read)."""
    year, month, day, hour, minute, second = utc_parts(now_ms)
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}Z"


def iso_utc_from_ms(time_ms: int) -> str:
    """Unix milliseconds -> '2025-09-15T10:30:00Z' (the spec's history format)."""
    return format_utc_ms(time_ms)
