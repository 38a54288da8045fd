"""The MQTT contract shared by the service and its clients: topics, ids, status and errors.

Everything a device or tool needs to talk to ``harstream serve`` is spelled here once, so
that the service, ``harstream replay``/``demo``/``bench`` and the tests cannot drift apart.
"""

from __future__ import annotations

import re

DEFAULT_PREFIX = "har"
# The first character is a letter or digit so that no id makes a topic level such as ".",
# ".." or "-" (har/../activity reads like a path); "service" is the status topic's level.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
RESERVED_IDS = frozenset({"service"})
ID_RULE = (
    "1-64 characters of letters, digits, '-', '_' and '.', starting with a letter or digit, "
    "not 'service'"
)
# Where an error about an id goes when the id level itself cannot carry a reply: it is
# empty, reserved, or longer than MAX_REPLY_ID characters (echoing it would let one
# message make the service publish up to 64 KiB of topic). Not a valid id, so no device
# can own it.
INVALID_ID_PLACEHOLDER = "_invalid"
MAX_REPLY_ID = 256
_NO_REPLY_IDS = frozenset({"", ".", "..", *RESERVED_IDS})
ERRORS_SUFFIX = "errors"
# Probabilities are published with 4 decimals: the models compute in float32, whose noise
# past the 4th decimal (0.8346350193023682) means nothing to a client and doubles the size
# of a prediction. Rounded one by one, 6 classes still sum to 1 within 6 x 0.00005.
PROB_DECIMALS = 4
STATUS_TOPIC_SUFFIX = "service/status"
RELOAD_TOPIC_SUFFIX = "service/reload"


def probability(value: float) -> float:
    """``value`` as published: rounded to :data:`PROB_DECIMALS` decimals."""
    return round(float(value), PROB_DECIMALS)


def probabilities(labels: list[str], values: list[float]) -> dict[str, float]:
    """The published ``probs`` object: each label's probability, rounded."""
    return {label: probability(v) for label, v in zip(labels, values, strict=True)}


def is_valid_id(device_id: str) -> bool:
    """Whether ``device_id`` may appear as the ``<id>`` level of a topic."""
    return ID_PATTERN.fullmatch(device_id) is not None and device_id not in RESERVED_IDS


def reply_id(device_id: str) -> str:
    """The id level to report an error about ``device_id`` on: the id itself when the
    device can subscribe to it, else :data:`INVALID_ID_PLACEHOLDER`."""
    if len(device_id) > MAX_REPLY_ID or device_id in _NO_REPLY_IDS:
        return INVALID_ID_PLACEHOLDER
    return device_id


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


def reload_topic(prefix: str) -> str:
    """Where an operator asks the service to reload its models (``--reload-topic``):
    ``<prefix>/service/reload``."""
    return f"{prefix}/{RELOAD_TOPIC_SUFFIX}"


def errors_topic(prefix: str, device_id: str) -> str:
    """Where bad input from ``device_id`` is reported: ``<prefix>/<id>/errors``."""
    return topic(prefix, device_id, ERRORS_SUFFIX)
