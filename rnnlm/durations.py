"""Wall-clock budgets written the way people write them: 90s, 5m, 1h30m, 2.5h, or plain seconds."""

from __future__ import annotations

import re

from rnnlm.errors import InvalidOption

UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str, argument: str = "max_time") -> float:
    """Seconds in `text`; raises InvalidOption, naming `argument`, for anything not a positive duration."""
    cleaned = text.strip().lower().replace(" ", "")
    try:
        seconds = float(cleaned)
    except ValueError:
        parts = _PART.findall(cleaned)
        if not parts or "".join(number + unit for number, unit in parts) != cleaned:
            raise InvalidOption(argument, f"{text!r} is not a duration; write e.g. 90s, 5m, 1h30m") from None
        seconds = sum(float(number) * UNIT_SECONDS[unit] for number, unit in parts)
    if not seconds > 0 or seconds == float("inf"):
        raise InvalidOption(argument, f"must be a positive duration, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def spoken_duration(seconds: float) -> str:
    """A span written as --max-time takes it (12s, 4m12s, 1h03m), for prose such as 'trained 4m12s'."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
