"""Reaching the Hugging Face Hub: one quick probe, then offline mode if it does not answer.

Offline, ``datasets`` and ``transformers`` retry every request for half a minute or more and print
each retry. Before the first Hub load ``continual`` checks once (5 s) whether the Hub answers; if
it does not, both libraries are switched to offline mode, so that cached models and datasets still
load and anything else fails within seconds, with a line that says the Hub was unreachable.
"""

from __future__ import annotations

import functools
import logging
import os
import urllib.error
import urllib.request

log = logging.getLogger(__name__)


@functools.cache
def reachable(timeout: float = 5.0) -> bool:
    """True when the Hub endpoint answers (any HTTP status) or offline mode was already asked for."""
    import huggingface_hub.constants as hub

    if hub.HF_HUB_OFFLINE:
        return False
    try:
        urllib.request.urlopen(hub.ENDPOINT, timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # it answered
    except (OSError, ValueError):
        log.warning("the Hugging Face Hub (%s) does not answer: only cached models and datasets can load", hub.ENDPOINT)
        _go_offline()
        return False
    return True


def _go_offline() -> None:
    import datasets.config
    import huggingface_hub.constants as hub

    os.environ["HF_HUB_OFFLINE"] = "1"  # for libraries imported later
    hub.HF_HUB_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = True


def unreachable_note() -> str:
    """What to add to a failed Hub load's error line: why it may have failed."""
    return "" if reachable() else " (the Hub is unreachable and it is not in the local cache)"
