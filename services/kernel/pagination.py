"""AIP-158 pagination: page sizes and opaque page tokens.

A token is the keyset position after the last item, plus a fingerprint of the request's
filters, so it cannot be replayed with different filters and stays stable under inserts."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from services.kernel.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(
    requested: int, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE
) -> int:
    if requested < 0:
        raise InvalidArgument([("page_size", "must not be negative")])
    if requested == 0:
        return default
    return min(requested, maximum)


def _fingerprint(filters: Any) -> str:
    return hashlib.sha256(json.dumps(filters, sort_keys=True).encode()).hexdigest()[:16]


def encode_token(position: list[Any], filters: Any = None) -> str:
    raw = json.dumps({"p": position, "f": _fingerprint(filters)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(token: str, filters: Any = None) -> list[Any] | None:
    """The position a token points at, None for the first page."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        position = data["p"]
        fingerprint = data["f"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument([("page_token", "is not a token this API issued")]) from exc
    if fingerprint != _fingerprint(filters) or not isinstance(position, list):
        raise InvalidArgument([("page_token", "does not match the request's filters")])
    return position
