"""State dicts saved from wrapped networks."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

__all__ = ["strip_wrapper_prefixes"]

log = logging.getLogger(__name__)

#: Key prefixes of ``nn.DataParallel`` / DDP (``module.``) and ``torch.compile`` (``_orig_mod.``).
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")


def strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``state_dict`` without the prefixes that ``nn.DataParallel`` / DDP (``module.``) and ``torch.compile``
    (``_orig_mod.``) add, nested in either order; a prefix is removed only when every key has it."""
    state_dict = dict(state_dict)
    while state_dict:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state_dict)), None)
        if prefix is None:
            break
        log.info("checkpoint: stripping the %r prefix of a DataParallel / torch.compile state dict", prefix)
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict
