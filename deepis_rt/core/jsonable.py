"""Plain JSON values from what results, reports and metadata hold (NumPy scalars, tuples, NaN).

One helper for every JSON file the package writes (``summary.json``, benchmark reports, training
histories) and for checkpoint metadata, which must hold only plain values to load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["json_safe"]

_PLAIN = (bool, int, float, str)


def json_safe(value: Any, nonfinite_to_none: bool = True) -> Any:
    """``value`` with plain containers and scalars only.

    Mappings become dicts with string keys, tuples and lists become lists, NumPy (and other
    ``.item()``) scalars become Python numbers, subclasses of ``bool`` / ``int`` / ``float`` /
    ``str`` (``torch.__version__``, ``IntEnum`` members) become the plain type.

    Parameters
    ----------
    value : object
        What to clean; anything else is returned as it is.
    nonfinite_to_none : bool
        Write NaN and infinities as None (JSON has no literal for them). False keeps them, for
        callers that refuse them with their own message.
    """
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, nonfinite_to_none) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, nonfinite_to_none) for v in value]
    if not isinstance(value, _PLAIN) and callable(getattr(value, "item", None)):
        try:
            return json_safe(value.item(), nonfinite_to_none)
        except (TypeError, ValueError):  # an array of more than one element
            return value
    for plain in _PLAIN:  # bool first: it is a subclass of int
        if isinstance(value, plain):
            value = value if type(value) is plain else plain(value)
            break
    if nonfinite_to_none and isinstance(value, float) and not math.isfinite(value):
        return None
    return value
