"""Who may write or read which meter.

Write RPCs are PUBLIC to the kernel interceptor and authenticate here, from the
`authorization: Bearer …` metadata, because they accept three kinds of credential:

- a meter token (emt_…) or an ingest key (emk_…), checked with the device registry's
  AuthenticateCredential (answers cached briefly; devices.credential.revoked evicts them and
  marks the credential revoked, which open streams check at every batch);
- a user access token (JWT, verified locally against auth's JWKS like the interceptor does),
  with role operator or above; each meter is looked up with DeviceService.GetMeter on the
  user's behalf (forwarding their authorization), so another organization's meter, or a meter
  the user may not see, is NOT_FOUND. Lookups are cached briefly per user and meter.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field

from energymesh.devices.v1 import devices_pb2
from services.kernel.context import Caller
from services.kernel.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
)
from services.kernel.permissions import Permission, require
from services.kernel.registry import TIMEOUT_SECONDS, DeviceRegistry
from services.kernel.tokens import TokenVerifier
from services.telemetry.ingest import MeterRules

log = logging.getLogger(__name__)

METER_TOKEN = devices_pb2.AuthenticateCredentialResponse.KIND_METER_TOKEN
DECOMMISSIONED = devices_pb2.METER_STATE_DECOMMISSIONED
# An ingest key's meter list is refreshed at most this often when a batch names a meter
# outside it (a meter created after the stream opened).
REFRESH_SECONDS = 2.0
# Credential answers whose derived lookups are kept (more are rebuilt, not lost).
MAX_DERIVED = 256


@dataclass(frozen=True)
class MeterAccess:
    meter_id: str
    organization_id: str
    rules: MeterRules | None


class MeterCatalog:
    """Registers of the meters telemetry has heard of (devices.meter.* events, GetMeter)."""

    def __init__(self) -> None:
        self._rules: dict[str, MeterRules] = {}

    def get(self, meter_id: str) -> MeterRules | None:
        return self._rules.get(meter_id)

    def put(self, meter_id: str, rules: MeterRules) -> None:
        self._rules[meter_id] = rules

    def forget(self, meter_id: str) -> None:
        self._rules.pop(meter_id, None)


def rules_of(meter: devices_pb2.Meter) -> MeterRules:
    return MeterRules(
        register_type=int(meter.register_type),
        rollover_value=meter.rollover_value if meter.HasField("rollover_value") else None,
    )


def bearer(authorization: str) -> str:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("a bearer credential is required (meter token, ingest key or JWT)")
    return token.strip()


@dataclass
class _Cached:
    value: devices_pb2.AuthenticateCredentialResponse
    fetched: float


@dataclass(frozen=True)
class _Derived:
    """What every stream of one AuthenticateCredential answer looks up: its meter ids as a
    set (the repeated field is a list) and its expiry in ms."""

    answer: devices_pb2.AuthenticateCredentialResponse
    meter_ids: frozenset[str]
    expire_ms: int | None


class WriteCaller:
    """The authenticated writer of one call or stream."""

    kind = "user"
    organization_id = ""

    async def meter(self, meter_id: str) -> MeterAccess:
        raise NotImplementedError

    def check_current(self) -> None:
        """Raises Unauthenticated once the credential has been revoked or has expired."""


@dataclass
class CredentialWriter(WriteCaller):
    access: Access
    secret: str
    answer: devices_pb2.AuthenticateCredentialResponse
    refreshed: float = field(default_factory=time.monotonic)

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "meter_token" if self.answer.kind == METER_TOKEN else "ingest_key"

    @property
    def organization_id(self) -> str:  # type: ignore[override]
        return self.answer.organization_id

    # Derived from `answer` (a set of its meter ids: a repeated field is scanned linearly;
    # its expiry in ms), recomputed whenever the answer is replaced.
    _of_answer: devices_pb2.AuthenticateCredentialResponse | None = field(
        default=None, init=False, repr=False
    )
    _meter_ids: frozenset[str] = field(default=frozenset(), init=False, repr=False)
    _expire_ms: int | None = field(default=None, init=False, repr=False)

    def _derive(self) -> None:
        if self._of_answer is not self.answer:
            derived = self.access.derived(self.answer)
            self._meter_ids, self._expire_ms = derived.meter_ids, derived.expire_ms
            self._of_answer = self.answer

    def check_current(self) -> None:
        self._derive()
        if self.answer.credential_id in self.access.revoked:
            raise Unauthenticated("the credential has been revoked")
        if self._expire_ms is not None and self._expire_ms <= time.time() * 1000:
            raise Unauthenticated("the credential has expired")

    async def meter(self, meter_id: str) -> MeterAccess:
        self.check_current()
        if not meter_id:
            if self.answer.kind == METER_TOKEN and len(self.answer.meter_ids) == 1:
                meter_id = self.answer.meter_ids[0]
            else:
                raise InvalidArgument([("meter_id", "is required with an ingest key")])
        if (
            meter_id not in self._meter_ids
            and self.answer.kind != METER_TOKEN
            and time.monotonic() - self.refreshed > REFRESH_SECONDS
        ):
            self.answer = await self.access.authenticate(self.secret, fresh=True)
            self.refreshed = time.monotonic()
            self._derive()
        if meter_id not in self._meter_ids:
            raise NotFound(
                f"meter {meter_id!r} not found (or not writable with this credential)",
                metadata={"resource": "meter"},
            )
        return MeterAccess(meter_id, self.organization_id, self.access.catalog.get(meter_id))


@dataclass
class UserWriter(WriteCaller):
    access: Access
    caller: Caller
    authorization: str

    @property
    def organization_id(self) -> str:  # type: ignore[override]
        return self.caller.organization_id

    async def meter(self, meter_id: str) -> MeterAccess:
        if not meter_id:
            raise InvalidArgument([("meter_id", "is required")])
        meter = await self.access.visible_meter(self.caller, self.authorization, meter_id)
        if meter.state == DECOMMISSIONED:
            raise FailedPrecondition(f"meter {meter_id} is decommissioned")
        return MeterAccess(meter.meter_id, meter.organization_id, rules_of(meter))


class Access:
    def __init__(
        self,
        devices: DeviceRegistry,
        verifier: TokenVerifier,
        catalog: MeterCatalog,
        cache_seconds: float,
    ) -> None:
        self.devices = devices
        self.verifier = verifier
        self.catalog = catalog
        self.cache_seconds = cache_seconds
        # Credential ids revoked since this process started (from devices.credential.revoked).
        self.revoked: set[str] = set()
        self._credentials: dict[str, _Cached] = {}
        self._inflight: dict[str, asyncio.Future[devices_pb2.AuthenticateCredentialResponse]] = {}
        # By id() of the answer (held, so the id is not reused): a thousand streams opened
        # with one ingest key build the set of its meters once, not once each.
        self._derived: dict[int, _Derived] = {}

    def derived(self, answer: devices_pb2.AuthenticateCredentialResponse) -> _Derived:
        found = self._derived.get(id(answer))
        if found is None or found.answer is not answer:
            if len(self._derived) >= MAX_DERIVED:
                self._derived.clear()
            found = _Derived(
                answer,
                frozenset(answer.meter_ids),
                answer.expire_time.ToMilliseconds() if answer.HasField("expire_time") else None,
            )
            self._derived[id(answer)] = found
        return found

    def revoke(self, credential_id: str) -> None:
        self.revoked.add(credential_id)
        for key, cached in list(self._credentials.items()):
            if cached.value.credential_id == credential_id:
                del self._credentials[key]

    def meter_changed(self, meter_id: str) -> None:
        self.devices.forget_meter(meter_id)

    async def writer(self, authorization: str) -> WriteCaller:
        token = bearer(authorization)
        if token.startswith(("emt_", "emk_")):
            answer = await self.authenticate(token)
            writer = CredentialWriter(self, token, answer)
            writer.check_current()
            return writer
        caller = await self.verifier.verify(token)
        require(caller, Permission.READINGS_WRITE)
        return UserWriter(self, caller, authorization)

    async def authenticate(
        self, secret: str, *, fresh: bool = False
    ) -> devices_pb2.AuthenticateCredentialResponse:
        """AuthenticateCredential, cached for cache_seconds; concurrent identical lookups
        (a thousand meters reconnecting with one ingest key) share one call."""
        key = hashlib.sha256(secret.encode()).hexdigest()
        cached = self._credentials.get(key)
        if (
            not fresh
            and cached is not None
            and time.monotonic() - cached.fetched < self.cache_seconds
            and cached.value.credential_id not in self.revoked
        ):
            return cached.value
        inflight = self._inflight.get(key)
        if inflight is None:
            inflight = asyncio.ensure_future(self._authenticate(secret))
            self._inflight[key] = inflight
            inflight.add_done_callback(lambda _: self._inflight.pop(key, None))
        answer = await asyncio.shield(inflight)
        if answer.credential_id in self.revoked:
            raise Unauthenticated("the credential has been revoked")
        self._credentials[key] = _Cached(answer, time.monotonic())
        return answer

    async def _authenticate(self, secret: str) -> devices_pb2.AuthenticateCredentialResponse:
        return await self.devices.call(
            "credential",
            lambda: self.devices.stub.AuthenticateCredential(
                devices_pb2.AuthenticateCredentialRequest(credential=secret),
                metadata=self.devices.metadata(),
                timeout=TIMEOUT_SECONDS,
            ),
        )

    async def visible_meter(
        self, caller: Caller, authorization: str, meter_id: str
    ) -> devices_pb2.Meter:
        """The meter as the caller may see it, remembered for the ingest checks."""
        meter = await self.devices.visible_meter(caller, authorization, meter_id)
        self.catalog.put(meter.meter_id, rules_of(meter))
        return meter

    async def meter_id_by_serial(self, authorization: str, serial: str) -> str:
        """The meter (in service) with this serial number, as the caller sees it."""
        response = await self.devices.call(
            f"meter with serial number {serial!r}",
            lambda: self.devices.stub.ListMeters(
                devices_pb2.ListMetersRequest(query=serial, page_size=1000),
                metadata=self.devices.metadata(authorization),
                timeout=TIMEOUT_SECONDS,
            ),
        )
        for meter in response.meters:
            if meter.serial_number == serial:
                return str(meter.meter_id)
        raise NotFound(f"no meter with serial number {serial!r}", metadata={"resource": "meter"})
