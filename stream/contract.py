"""The MQTT contract shared by the service and its clients: topics, ids, status and errors.

Everything a device or tool needs to talk to ``harstream serve`` is spelled here once, so
that the service, ``harstream replay``/``demo``/``bench`` and the tests cannot drift apart.
"""

from __future__ import annotations

import re

DEFAULT_PREFIX = "har"
ID_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
ID_RULE = "1-64 characters of letters, digits, '-', '_' and '.'"
ERRORS_SUFFIX = "errors"
STATUS_TOPIC_SUFFIX = "service/status"


def is_valid_id(device_id: str) -> bool:
    """Whether ``device_id`` may appear as the ``<id>`` level of a topic."""
    return ID_PATTERN.fullmatch(device_id) is not None


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is usable as a topic prefix, else raise ValueError."""
    if not prefix or prefix.startswith("/") or prefix.endswith("/"):
        raise ValueError(f"topic prefix {prefix!r} must be non-empty without leading/trailing '/'")
    if any(c in prefix for c in "+#\0"):
        raise ValueError(f"topic prefix {prefix!r} must not contain '+', '#' or NUL")
    return prefix


def topic(prefix: str, device_id: str, suffix: str) -> str:
    """``<prefix>/<id>/<suffix>``, e.g. ``har/watch-7/accel``."""
    return f"{prefix}/{device_id}/{suffix}"


def subscription(prefix: str, suffix: str) -> str:
    """The wildcard subscription of a route: ``<prefix>/+/<suffix>``."""
    return f"{prefix}/+/{suffix}"


def status_topic(prefix: str) -> str:
    """Retained service status topic: ``<prefix>/service/status``."""
    return f"{prefix}/{STATUS_TOPIC_SUFFIX}"


def errors_topic(prefix: str, device_id: str) -> str:
    """Where bad input from ``device_id`` is reported: ``<prefix>/<id>/errors``."""
    return topic(prefix, device_id, ERRORS_SUFFIX)
