"""Training-time filters on the per-line values of a captions file (`DataConfig.filters`).

A filter is one comparison ``KEY OP VALUE`` written as a string, e.g. ``"motion >= 1.5"``,
``"border < 0.2"`` or ``"source != raw/ads.mp4"``. OP is one of ``< <= > >= == !=``; VALUE is a
number (then the line's value must be a number) or, for ``==`` / ``!=`` only, a text. A captions
line is used when it passes every filter; a line without the key, or with a text where a number
is compared, fails. The scores `tubelet data prepare` writes (``motion``, ``border``,
``duration``, ``width``, ``height``, ...) are the usual keys, but any key of a line works.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tubelet.errors import ConfigError

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
_FILTER = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*(<=|>=|==|!=|<|>)\s*(.+?)\s*$")


@dataclass(frozen=True)
class Filter:
    """One parsed filter: ``key op value``; `text` is what the config said."""

    key: str
    op: str
    value: float | str
    text: str

    def passes(self, meta: Mapping[str, Any]) -> bool:
        """Whether a captions line with the extra values `meta` passes (a missing key fails)."""
        if self.key not in meta:
            return False
        have = meta[self.key]
        if isinstance(self.value, str):
            return _OPS[self.op](str(have), self.value)
        if isinstance(have, bool) or not isinstance(have, (int, float)) or math.isnan(have):
            return False
        return _OPS[self.op](have, self.value)


def parse_filter(text: Any, where: str = "DataConfig.filters") -> Filter:
    """Parse ``"KEY OP VALUE"``; ConfigError with an example when it is not one."""
    example = 'e.g. "motion >= 1.5" (operators < <= > >= == !=)'
    if not isinstance(text, str):
        raise ConfigError(f"{where}: expected a string like {example}, got {text!r}")
    m = _FILTER.match(text)
    if not m:
        raise ConfigError(f"{where}: {text!r} is not KEY OP VALUE, {example}")
    key, op, raw = m.groups()
    value: float | str
    try:
        value = float(raw)
    except ValueError:
        value = raw.strip("\"'")
        if op not in ("==", "!="):
            raise ConfigError(
                f"{where}: {text!r} compares with {op} to {raw!r}, which is not a number"
            ) from None
    else:
        if math.isnan(value):
            raise ConfigError(f"{where}: {text!r}: the value must be a number, not nan")
    return Filter(key, op, value, text.strip())


def parse_filters(values: Any, where: str = "DataConfig.filters") -> list[Filter]:
    """Parse a list of filter strings (a single string is one filter)."""
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f'{where}: expected a list of strings like "motion >= 1.5", got {values!r}')
    return [parse_filter(v, f"{where}[{i}]") for i, v in enumerate(values)]
