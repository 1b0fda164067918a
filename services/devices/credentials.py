"""Meter tokens and ingest keys: `<kind>_<public id>_<secret>`, shown once, stored as the
SHA-256 of the whole string and found by their public prefix `<kind>_<public id>`."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

METER_TOKEN_KIND = "emt"
INGEST_KEY_KIND = "emk"
KINDS = (METER_TOKEN_KIND, INGEST_KEY_KIND)


@dataclass(frozen=True)
class NewCredential:
    # The whole secret, for the response only.
    secret: str
    # Public and unique: how the stored row is found.
    prefix: str
    # What is stored.
    hash: str


def credential_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_credential(kind: str) -> NewCredential:
    prefix = f"{kind}_{secrets.token_hex(6)}"
    secret = f"{prefix}_{secrets.token_urlsafe(32)}"
    return NewCredential(secret=secret, prefix=prefix, hash=credential_hash(secret))


def parse_credential(secret: str) -> tuple[str, str] | None:
    """(kind, prefix) of something shaped like a credential, else None."""
    kind, _, rest = secret.partition("_")
    public, _, tail = rest.partition("_")
    if kind not in KINDS or len(public) != 12 or not tail:
        return None
    return kind, f"{kind}_{public}"


def matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(credential_hash(secret), stored_hash)
