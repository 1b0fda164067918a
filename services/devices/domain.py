"""What the devices service does, independent of gRPC: sites, meters, their import from CSV,
credentials, assignments, and keeping last_seen_time and connectivity current.

Tenancy: every lookup is scoped to the caller's organization, and for callers without
ORGANIZATION_READ (viewers) to the meters assigned to them; anything outside is NOT_FOUND,
decided before the request is validated against the resource."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence, Set
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.devices import events, repository
from services.devices.credentials import (
    INGEST_KEY_KIND,
    METER_TOKEN_KIND,
    matches,
    new_credential,
    parse_credential,
)
from services.devices.importer import ImportRow, parse_csv
from services.devices.models import IngestKey, Meter, MeterAssignee, MeterToken, Site
from services.devices.repository import MeterFilters, Ordering, RowLock
from services.devices.resources import etag as current_etag
from services.devices.validation import (
    IMMUTABLE_METER_FIELDS,
    Commodity,
    Connectivity,
    Direction,
    MeterInput,
    MeterState,
    RegisterType,
    SiteInput,
    check_meter,
    check_site,
    check_text,
    connectivity_of,
    parse_id,
    quoted,
    shorten,
)
from services.kernel.context import Caller, current_client_address
from services.kernel.database import Database
from services.kernel.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Violations,
)
from services.kernel.outbox import Outbox
from services.kernel.permissions import Permission, has_permission, require

log = logging.getLogger(__name__)

# In the API, expected_interval_seconds is the Duration field expected_interval.
API_NAMES = {"expected_interval_seconds": "expected_interval"}
SITE_FIELDS = ("name", "time_zone", "address", "latitude", "longitude", "labels")
# What an import reports, so that the answer fits in a gRPC message (4 MiB) whatever the
# document: at most this many errors per failed row, and errors for this many failed rows.
MAX_ROW_ERRORS = 5
MAX_ROWS_WITH_ERRORS = 1000
# With all_or_nothing, how much of the problems the INVALID_ARGUMENT names, in bytes: they
# travel in a gRPC trailer, and clients refuse metadata beyond 8 to 16 KiB.
IMPORT_VIOLATIONS_BUDGET = 3000
LAST_USED_RESOLUTION = timedelta(minutes=1)
CONNECTIVITY_BATCH = 500
# Import rows written per flush.
IMPORT_CHUNK = 250

# Checks that a user id names a user of the caller's organization (asked of auth).
UserCheck = Callable[[str], Awaitable[None]]


def now() -> datetime:
    return datetime.now(UTC)


class DuplicateField(AlreadyExists):
    """ALREADY_EXISTS that also names the field, as a google.rpc.BadRequest."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message, metadata={"field": field_name})
        self.field_name = field_name

    def details(self) -> list[AnyProto]:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=self.field_name, description=self.message
        )
        packed = AnyProto()
        packed.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        return [*super().details(), packed]


def _is_duplicate_serial(error: IntegrityError) -> bool:
    return "meters_serial_in_service" in str(error.orig)


@dataclass(frozen=True)
class IssuedCredential:
    """A new credential: its stored row and the secret, shown once."""

    row: MeterToken | IngestKey
    secret: str


@dataclass(frozen=True)
class Authentication:
    kind: str
    credential_id: str
    organization_id: str
    site_id: str | None
    meter_ids: list[str]
    expire_time: datetime | None


class ImportAction(StrEnum):
    """What happened to one CSV row."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    FAILED = "failed"


@dataclass
class ImportOutcome:
    """The result of one CSV row."""

    row: int
    action: ImportAction
    serial_number: str
    meter_id: str = ""
    errors: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _Step:
    """What one CSV row will do: create a meter, update one, or nothing."""

    outcome: ImportOutcome
    create: MeterInput | None = None
    update: tuple[Meter, MeterInput, list[str]] | None = None


@dataclass(frozen=True)
class ImportSummary:
    outcomes: list[ImportOutcome]
    applied: bool

    def count(self, action: ImportAction) -> int:
        return sum(1 for outcome in self.outcomes if outcome.action == action)


class DevicesDomain:
    def __init__(self, database: Database, outbox: Outbox) -> None:
        self.database = database
        self.outbox = outbox
        # Set when the next meter to go offline may be due earlier than the connectivity
        # monitor's next pass (see _wake_monitor_for): the monitor recomputes.
        self._connectivity_wakeup = asyncio.Event()
        # When the monitor's next pass is due; None while it runs one.
        self._monitor_due: datetime | None = None

    # --- helpers --------------------------------------------------------------------------

    @staticmethod
    def _viewer(caller: Caller) -> str | None:
        """The user whose assignments narrow what the caller sees, or None for all."""
        if has_permission(caller, Permission.ORGANIZATION_READ):
            return None
        return caller.user_id

    async def _site(
        self, session: AsyncSession, caller: Caller, site_id: str, *, lock: RowLock | None = None
    ) -> Site:
        """The caller's site. Anything that adds to a site (a meter, an ingest key) reads it
        with lock="share", so that it cannot land on a site delete_site is removing."""
        parsed = parse_id(site_id)
        site = (
            await repository.site_by_id(
                session, caller.organization_id, parsed, viewer=self._viewer(caller), lock=lock
            )
            if parsed
            else None
        )
        if site is None:
            raise NotFound(f"site {site_id!r} not found", metadata={"resource": "site"})
        return site

    async def _meter(
        self, session: AsyncSession, caller: Caller, meter_id: str, *, lock: bool = False
    ) -> Meter:
        parsed = parse_id(meter_id)
        meter = (
            await repository.meter_by_id(
                session, caller.organization_id, parsed, viewer=self._viewer(caller), lock=lock
            )
            if parsed
            else None
        )
        if meter is None:
            raise NotFound(f"meter {meter_id!r} not found", metadata={"resource": "meter"})
        return meter

    async def _emit(self, session: AsyncSession, subject: str, event: Message) -> None:
        await self.outbox.add(session, subject, event)

    async def _audit(
        self,
        session: AsyncSession,
        caller: Caller,
        action: str,
        target: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        event = events.audit_event(
            organization_id=caller.organization_id,
            actor_user_id=caller.user_id,
            action=action,
            target=target,
            client_address=current_client_address.get(),
            now=now(),
            details=details,
        )
        await self.outbox.add(session, events.audit_subject(action), event, event.event_id)

    async def _revoked(self, session: AsyncSession, credential: MeterToken | IngestKey) -> None:
        await self._emit(session, events.CREDENTIAL_REVOKED, events.credential_revoked(credential))

    # --- sites ----------------------------------------------------------------------------

    async def create_site(self, caller: Caller, data: SiteInput) -> Site:
        violations = Violations()
        check_site(violations, "site.", data)
        violations.raise_if_any()
        moment = now()
        async with self.database.transaction() as session:
            site = Site(
                organization_id=caller.organization_id,
                name=data.name.strip(),
                time_zone=data.time_zone,
                address=data.address.strip(),
                latitude=data.latitude,
                longitude=data.longitude,
                labels=dict(data.labels),
                version=1,
                create_time=moment,
                update_time=moment,
            )
            session.add(site)
            await session.flush()
            await self._emit(session, events.SITE_CREATED, events.site_created(site))
            await self._audit(
                session, caller, "devices.site.created", f"sites/{site.id}", {"name": site.name}
            )
        self.outbox.wake()
        return site

    async def get_site(self, caller: Caller, site_id: str) -> Site:
        async with self.database.sessions() as session:
            return await self._site(session, caller, site_id)

    async def list_sites(
        self,
        caller: Caller,
        query_text: str,
        ordering: Ordering,
        after: tuple[Any, str] | None,
        limit: int,
    ) -> list[Site]:
        async with self.database.sessions() as session:
            return await repository.list_sites(
                session,
                caller.organization_id,
                viewer=self._viewer(caller),
                query_text=query_text,
                ordering=ordering,
                after=after,
                limit=limit,
            )

    async def update_site(
        self, caller: Caller, site_id: str, data: SiteInput, paths: set[str], etag: str
    ) -> Site:
        async with self.database.transaction() as session:
            site = await self._site(session, caller, site_id, lock="update")
            current = SiteInput(
                name=site.name,
                time_zone=site.time_zone,
                address=site.address,
                latitude=site.latitude,
                longitude=site.longitude,
                labels=dict(site.labels),
            )
            merged = replace(current, **{path: getattr(data, path) for path in paths})
            violations = Violations()
            check_site(violations, "site.", merged)
            violations.raise_if_any()
            _check_etag(etag, site.id, site.version)
            changed = [
                path for path in SITE_FIELDS if getattr(merged, path) != getattr(current, path)
            ]
            if changed:
                site.name = merged.name.strip()
                site.time_zone = merged.time_zone
                site.address = merged.address.strip()
                site.latitude = merged.latitude
                site.longitude = merged.longitude
                site.labels = dict(merged.labels)
                site.version += 1
                site.update_time = now()
                await session.flush()
                await self._emit(session, events.SITE_UPDATED, events.site_updated(site, changed))
                await self._audit(
                    session,
                    caller,
                    "devices.site.updated",
                    f"sites/{site.id}",
                    {"fields": changed},
                )
        self.outbox.wake()
        return site

    async def delete_site(self, caller: Caller, site_id: str) -> None:
        async with self.database.transaction() as session:
            site = await self._site(session, caller, site_id, lock="update")
            if await repository.site_has_meters_in_service(session, site.id):
                raise FailedPrecondition(
                    "the site still has meters: move or decommission them first",
                    metadata={"rule": "site_has_meters"},
                )
            moment = now()
            site.delete_time = moment
            for key in await repository.revoke_site_ingest_keys(session, site.id, moment):
                await self._revoked(session, key)
            await self._emit(session, events.SITE_DELETED, events.site_deleted(site))
            await self._audit(
                session, caller, "devices.site.deleted", f"sites/{site.id}", {"name": site.name}
            )
        self.outbox.wake()

    # --- meters ---------------------------------------------------------------------------

    async def create_meter(self, caller: Caller, data: MeterInput) -> Meter:
        data = data.with_defaults()
        violations = Violations()
        check_meter(violations, "meter.", data, API_NAMES)
        violations.raise_if_any()
        assert data.site_id is not None
        moment = now()
        try:
            async with self.database.transaction() as session:
                site = await self._site(session, caller, data.site_id, lock="share")
                meter = _new_meter(caller.organization_id, site.id, data, moment)
                session.add(meter)
                await session.flush()
                await self._emit(session, events.METER_CREATED, events.meter_created(meter, moment))
                await self._audit(
                    session,
                    caller,
                    "devices.meter.created",
                    f"meters/{meter.id}",
                    {"serial_number": meter.serial_number, "site_id": site.id},
                )
        except IntegrityError as error:
            if _is_duplicate_serial(error):
                raise DuplicateField(
                    "meter.serial_number",
                    f"a meter with serial number {data.serial_number!r} is already in service",
                ) from None
            raise
        self.outbox.wake()
        return meter

    async def get_meter(self, caller: Caller, meter_id: str) -> Meter:
        async with self.database.sessions() as session:
            return await self._meter(session, caller, meter_id)

    async def list_meters(
        self,
        caller: Caller,
        filters: MeterFilters,
        ordering: Ordering,
        after: tuple[Any, str] | None,
        limit: int,
    ) -> list[Meter]:
        async with self.database.sessions() as session:
            if filters.site_id is not None:
                # A site the caller cannot see is NOT_FOUND, not an empty page.
                await self._site(session, caller, filters.site_id)
            return await repository.list_meters(
                session,
                caller.organization_id,
                viewer=self._viewer(caller),
                filters=filters,
                ordering=ordering,
                after=after,
                limit=limit,
                now=now(),
            )

    async def update_meter(
        self, caller: Caller, meter_id: str, data: MeterInput, paths: set[str], etag: str
    ) -> Meter:
        async with self.database.transaction() as session:
            meter = await self._meter(session, caller, meter_id, lock=True)
            if meter.state == MeterState.DECOMMISSIONED.value:
                raise FailedPrecondition(
                    "a decommissioned meter cannot be changed",
                    metadata={"rule": "meter_decommissioned"},
                )
            current = _meter_input(meter)
            merged = _apply_meter_changes(current, data, paths)
            violations = Violations()
            for name in sorted(IMMUTABLE_METER_FIELDS):
                given = getattr(data, name)
                if given is not None and given != getattr(current, name):
                    violations.add(f"meter.{name}", "is immutable")
            check_meter(violations, "meter.", merged, API_NAMES)
            if "state" in paths and data.state is None:
                violations.add("meter.state", "is required when state is in update_mask")
            violations.raise_if_any()
            _check_etag(etag, meter.id, meter.version)
            changed = _changed_fields(current, merged)
            if "site_id" in changed:
                assert merged.site_id is not None
                await self._site(session, caller, merged.site_id, lock="share")
            if changed:
                moment = now()
                _apply_to_meter(meter, merged)
                meter.version += 1
                meter.update_time = moment
                await session.flush()
                api_changed = [API_NAMES.get(name, name) for name in changed]
                await self._emit(
                    session, events.METER_UPDATED, events.meter_updated(meter, api_changed, moment)
                )
                await self._audit(
                    session,
                    caller,
                    "devices.meter.updated",
                    f"meters/{meter.id}",
                    {"fields": api_changed},
                )
        self.outbox.wake()
        self._connectivity_wakeup.set()
        return meter

    async def delete_meter(self, caller: Caller, meter_id: str, *, force: bool) -> None:
        async with self.database.transaction() as session:
            meter = await self._meter(session, caller, meter_id, lock=True)
            if force:
                require(caller, Permission.DATA_PURGE)
            moment = now()
            if force or meter.state != MeterState.DECOMMISSIONED.value:
                for token in await repository.revoke_meter_tokens(session, meter.id, moment):
                    await self._revoked(session, token)
            if force:
                await self._emit(session, events.METER_PURGED, events.meter_purged(meter))
                await self._audit(
                    session,
                    caller,
                    "devices.meter.purged",
                    f"meters/{meter.id}",
                    {"serial_number": meter.serial_number},
                )
                await session.delete(meter)
            elif meter.state != MeterState.DECOMMISSIONED.value:
                meter.state = MeterState.DECOMMISSIONED.value
                meter.version += 1
                meter.update_time = moment
                await session.flush()
                await self._emit(
                    session,
                    events.METER_DECOMMISSIONED,
                    events.meter_decommissioned(meter, moment),
                )
                await self._audit(
                    session,
                    caller,
                    "devices.meter.decommissioned",
                    f"meters/{meter.id}",
                    {"serial_number": meter.serial_number},
                )
        self.outbox.wake()

    # --- import ---------------------------------------------------------------------------

    async def import_meters(
        self,
        caller: Caller,
        document: bytes,
        default_site_id: str,
        *,
        max_bytes: int,
        max_rows: int,
        validate_only: bool,
        all_or_nothing: bool,
    ) -> ImportSummary:
        """Reads the CSV document, plans every row against the current meters (locked), then
        writes the valid rows in the same transaction: nothing half-written, whatever fails.
        The default site comes first: another organization's is NOT_FOUND before anything
        about the document is said."""
        try:
            async with self.database.transaction() as session:
                default_site = (
                    (await self._site(session, caller, default_site_id, lock="share")).id
                    if default_site_id
                    else None
                )
                # Pure CPU (a quarter of a second for 10,000 rows): off the event loop.
                rows = await asyncio.to_thread(
                    parse_csv, document, max_bytes=max_bytes, max_rows=max_rows
                )
                plan = await self._plan_import(session, caller, rows, default_site)
                outcomes = [step.outcome for step in plan]
                failed = [outcome for outcome in outcomes if outcome.action is ImportAction.FAILED]
                if failed and all_or_nothing:
                    raise _import_violations(failed)
                if validate_only:
                    return ImportSummary(outcomes, applied=False)
                await self._apply_import(session, caller, plan)
        except IntegrityError as error:
            if _is_duplicate_serial(error):
                raise Aborted(
                    "a meter with one of these serial numbers was created meanwhile; retry"
                ) from None
            raise
        self.outbox.wake()
        return ImportSummary(outcomes, applied=True)

    async def _plan_import(
        self,
        session: AsyncSession,
        caller: Caller,
        rows: Sequence[ImportRow],
        default_site: str | None,
    ) -> list[_Step]:
        """What each row would do; nothing is written."""
        wanted_sites = {parse_id(row.values.site_id) for row in rows if row.values.site_id}
        live_sites = await repository.site_ids(
            session, caller.organization_id, [site for site in wanted_sites if site]
        )
        serials = [row.values.serial_number for row in rows if row.values.serial_number]
        existing = await repository.meters_in_service_by_serial(
            session, caller.organization_id, serials
        )
        # Pure CPU, ~1 s for 10,000 rows: off the event loop, which keeps serving meanwhile.
        return await asyncio.to_thread(_plan_rows, rows, default_site, live_sites, existing)

    async def _apply_import(self, session: AsyncSession, caller: Caller, plan: list[_Step]) -> None:
        moment = now()
        # In chunks: one flush of 10,000 meters holds the event loop for a second.
        for start in range(0, len(plan), IMPORT_CHUNK):
            created: list[tuple[ImportOutcome, Meter]] = []
            updated: list[tuple[Meter, list[str]]] = []
            for step in plan[start : start + IMPORT_CHUNK]:
                if step.create is not None:
                    assert step.create.site_id is not None
                    meter = _new_meter(
                        caller.organization_id, step.create.site_id, step.create, moment
                    )
                    session.add(meter)
                    created.append((step.outcome, meter))
                elif step.update is not None:
                    meter, merged, changed = step.update
                    _apply_to_meter(meter, merged)
                    meter.version += 1
                    meter.update_time = moment
                    updated.append((meter, [API_NAMES.get(name, name) for name in changed]))
            await session.flush()
            for outcome, meter in created:
                outcome.meter_id = meter.id
                await self._emit(session, events.METER_CREATED, events.meter_created(meter, moment))
            for meter, changed in updated:
                await self._emit(
                    session, events.METER_UPDATED, events.meter_updated(meter, changed, moment)
                )
        summary = ImportSummary([step.outcome for step in plan], applied=True)
        await self._audit(
            session,
            caller,
            "devices.meters.imported",
            "meters",
            {action.value: summary.count(action) for action in ImportAction},
        )

    # --- credentials ----------------------------------------------------------------------

    async def create_meter_token(
        self, caller: Caller, meter_id: str, display_name: str, expire_time: datetime | None
    ) -> IssuedCredential:
        async with self.database.transaction() as session:
            meter = await self._meter(session, caller, meter_id)
            violations = Violations()
            check_text(violations, "display_name", display_name, 100, required=False)
            _check_expiry(violations, "expire_time", expire_time)
            violations.raise_if_any()
            if meter.state == MeterState.DECOMMISSIONED.value:
                raise FailedPrecondition(
                    "a decommissioned meter gets no tokens",
                    metadata={"rule": "meter_decommissioned"},
                )
            credential = new_credential(METER_TOKEN_KIND)
            token = MeterToken(
                organization_id=meter.organization_id,
                meter_id=meter.id,
                display_name=display_name.strip(),
                prefix=credential.prefix,
                token_hash=credential.hash,
                expire_time=expire_time,
                create_time=now(),
            )
            session.add(token)
            await session.flush()
            await self._audit(
                session,
                caller,
                "devices.credential.created",
                f"meters/{meter.id}/tokens/{token.id}",
                {"prefix": token.prefix},
            )
        self.outbox.wake()
        return IssuedCredential(token, credential.secret)

    async def list_meter_tokens(self, caller: Caller, meter_id: str) -> list[MeterToken]:
        async with self.database.sessions() as session:
            meter = await self._meter(session, caller, meter_id)
            return await repository.live_meter_tokens(session, meter.id, now())

    async def delete_meter_token(self, caller: Caller, meter_id: str, token_id: str) -> None:
        async with self.database.transaction() as session:
            meter = await self._meter(session, caller, meter_id)
            parsed = parse_id(token_id)
            token = (
                await repository.meter_token(session, meter.id, parsed, lock=True)
                if parsed
                else None
            )
            if token is None:
                raise NotFound(f"token {token_id!r} not found", metadata={"resource": "token"})
            token.revoke_time = now()
            await self._revoked(session, token)
            await self._audit(
                session,
                caller,
                "devices.credential.revoked",
                f"meters/{meter.id}/tokens/{token.id}",
                {"prefix": token.prefix},
            )
        self.outbox.wake()

    async def create_ingest_key(
        self, caller: Caller, display_name: str, site_id: str, expire_time: datetime | None
    ) -> IssuedCredential:
        async with self.database.transaction() as session:
            site = await self._site(session, caller, site_id, lock="share") if site_id else None
            violations = Violations()
            check_text(violations, "ingest_key.display_name", display_name, 100, required=True)
            _check_expiry(violations, "ingest_key.expire_time", expire_time)
            violations.raise_if_any()
            credential = new_credential(INGEST_KEY_KIND)
            key = IngestKey(
                organization_id=caller.organization_id,
                site_id=site.id if site else None,
                display_name=display_name.strip(),
                prefix=credential.prefix,
                token_hash=credential.hash,
                expire_time=expire_time,
                create_time=now(),
            )
            session.add(key)
            await session.flush()
            await self._audit(
                session,
                caller,
                "devices.credential.created",
                f"ingest-keys/{key.id}",
                {"prefix": key.prefix, "site_id": key.site_id or ""},
            )
        self.outbox.wake()
        return IssuedCredential(key, credential.secret)

    async def list_ingest_keys(self, caller: Caller) -> list[IngestKey]:
        async with self.database.sessions() as session:
            return await repository.live_ingest_keys(session, caller.organization_id, now())

    async def delete_ingest_key(self, caller: Caller, key_id: str) -> None:
        async with self.database.transaction() as session:
            parsed = parse_id(key_id)
            key = (
                await repository.ingest_key(session, caller.organization_id, parsed, lock=True)
                if parsed
                else None
            )
            if key is None:
                raise NotFound(
                    f"ingest key {key_id!r} not found", metadata={"resource": "ingest_key"}
                )
            key.revoke_time = now()
            await self._revoked(session, key)
            await self._audit(
                session,
                caller,
                "devices.credential.revoked",
                f"ingest-keys/{key.id}",
                {"prefix": key.prefix},
            )
        self.outbox.wake()

    async def authenticate_credential(self, secret: str) -> Authentication:
        if not secret:
            raise InvalidArgument([("credential", "is required")])
        parsed = parse_credential(secret)
        refused = Unauthenticated("the credential is unknown, revoked or expired")
        if parsed is None:
            raise refused
        kind, prefix = parsed
        moment = now()
        async with self.database.transaction() as session:
            row: MeterToken | IngestKey | None = (
                await repository.meter_token_by_prefix(session, prefix)
                if kind == METER_TOKEN_KIND
                else await repository.ingest_key_by_prefix(session, prefix)
            )
            if (
                row is None
                or not matches(secret, row.token_hash)
                or row.revoke_time is not None
                or (row.expire_time is not None and row.expire_time <= moment)
            ):
                raise refused
            if row.last_used_time is None or moment - row.last_used_time > LAST_USED_RESOLUTION:
                row.last_used_time = moment
            if isinstance(row, MeterToken):
                meter = await repository.meter_by_id(session, row.organization_id, row.meter_id)
                if meter is None or meter.state == MeterState.DECOMMISSIONED.value:
                    raise refused
                return Authentication(
                    kind=kind,
                    credential_id=row.id,
                    organization_id=row.organization_id,
                    site_id=None,
                    meter_ids=[meter.id],
                    expire_time=row.expire_time,
                )
            meter_ids = await repository.meter_ids_in_service(
                session, row.organization_id, row.site_id
            )
            return Authentication(
                kind=kind,
                credential_id=row.id,
                organization_id=row.organization_id,
                site_id=row.site_id,
                meter_ids=meter_ids,
                expire_time=row.expire_time,
            )

    # --- assignments ----------------------------------------------------------------------

    async def create_meter_assignee(
        self, caller: Caller, meter_id: str, user_id: str, check_user: UserCheck
    ) -> MeterAssignee:
        async with self.database.sessions() as session:
            meter = await self._meter(session, caller, meter_id)
        parsed = parse_id(user_id)
        if parsed is None:
            raise InvalidArgument([("user_id", "must be a user id (UUID)")])
        await check_user(parsed)
        try:
            async with self.database.transaction() as session:
                meter = await self._meter(session, caller, meter_id, lock=True)
                assignee = MeterAssignee(
                    meter_id=meter.id,
                    user_id=parsed,
                    organization_id=meter.organization_id,
                    create_time=now(),
                )
                session.add(assignee)
                await session.flush()
                await self._emit(
                    session,
                    events.METER_ASSIGNEE_ADDED,
                    events.assignee_changed(meter.organization_id, meter.id, parsed),
                )
                await self._audit(
                    session,
                    caller,
                    "devices.meter.assignee_added",
                    f"meters/{meter.id}/assignees/{parsed}",
                )
        except IntegrityError:
            raise DuplicateField(
                "user_id", f"user {parsed} is already assigned to this meter"
            ) from None
        self.outbox.wake()
        return assignee

    async def delete_meter_assignee(self, caller: Caller, meter_id: str, user_id: str) -> None:
        async with self.database.transaction() as session:
            meter = await self._meter(session, caller, meter_id, lock=True)
            parsed = parse_id(user_id)
            assignee = await repository.assignee(session, meter.id, parsed) if parsed else None
            if assignee is None:
                raise NotFound(
                    f"user {user_id!r} is not assigned to this meter",
                    metadata={"resource": "assignee"},
                )
            await session.delete(assignee)
            await self._emit(
                session,
                events.METER_ASSIGNEE_REMOVED,
                events.assignee_changed(meter.organization_id, meter.id, assignee.user_id),
            )
            await self._audit(
                session,
                caller,
                "devices.meter.assignee_removed",
                f"meters/{meter.id}/assignees/{assignee.user_id}",
            )
        self.outbox.wake()

    async def list_meter_assignees(self, caller: Caller, meter_id: str) -> list[MeterAssignee]:
        async with self.database.sessions() as session:
            meter = await self._meter(session, caller, meter_id)
            return await repository.assignees(session, meter.id)

    # --- readings and connectivity --------------------------------------------------------

    async def record_readings(self, committed: events.ReadingsCommitted) -> None:
        """telemetry.readings.committed: last_seen_time moves forward (idempotent), and a
        meter that comes back online is announced at once."""
        meter_id = parse_id(committed.meter_id)
        if meter_id is None:
            return
        moment = now()
        # A device clock running ahead must not keep a meter "online" into the future.
        seen = min(committed.last_time, moment)
        async with self.database.transaction() as session:
            meter = await repository.record_seen(session, committed.organization_id, meter_id, seen)
            changed = meter is not None and await self._announce(session, meter, moment)
        if meter is not None and changed:
            self.outbox.wake()
            self._wake_monitor_for(meter)

    def _wake_monitor_for(self, meter: Meter) -> None:
        """Wakes the connectivity monitor if this meter, just announced ONLINE, goes offline
        before the monitor's next pass. Readings of a meter already ONLINE only move its
        deadline later, so a stream of them wakes nothing (each wake is a scan of the meters)."""
        if meter.announced_connectivity != Connectivity.ONLINE.value:
            return
        assert meter.last_seen_time is not None
        deadline = meter.last_seen_time + timedelta(seconds=2 * meter.expected_interval_seconds)
        due = self._monitor_due
        if due is None or deadline < due:
            self._connectivity_wakeup.set()

    async def _announce(self, session: AsyncSession, meter: Meter, moment: datetime) -> bool:
        """Records a connectivity change (published for an ACTIVE meter), once per transition;
        whether there was one."""
        if meter.state == MeterState.DECOMMISSIONED.value:
            return False
        current = connectivity_of(meter.last_seen_time, meter.expected_interval_seconds, moment)
        previous = Connectivity(meter.announced_connectivity)
        if current is previous:
            return False
        meter.announced_connectivity = current.value
        if meter.state == MeterState.ACTIVE.value:
            await self._emit(
                session,
                events.METER_CONNECTIVITY_CHANGED,
                events.connectivity_changed(meter, previous, current, moment),
            )
        return True

    async def announce_connectivity_changes(self) -> int:
        """One pass: announces every meter whose connectivity changed; returns how many."""
        moment = now()
        async with self.database.transaction() as session:
            changed = await repository.connectivity_changes(session, moment, CONNECTIVITY_BATCH)
            for meter in changed:
                await self._announce(session, meter, moment)
        if changed:
            self.outbox.wake()
        return len(changed)

    async def run_connectivity_monitor(self, max_sleep_seconds: float) -> None:
        """Background job: sleeps until the next meter would go offline (or something
        changed), then announces what changed. No polling of every meter every second."""
        while True:
            # While a pass runs, any meter coming online may be due before the next one.
            self._monitor_due = None
            self._connectivity_wakeup.clear()
            try:
                while await self.announce_connectivity_changes() == CONNECTIVITY_BATCH:
                    pass
                async with self.database.sessions() as session:
                    deadline = await repository.next_offline_time(session)
            except Exception:
                log.warning("connectivity monitor: pass failed, retrying", exc_info=True)
                await asyncio.sleep(1)
                continue
            sleep = max_sleep_seconds
            if deadline is not None:
                sleep = min(max(0.05, (deadline - now()).total_seconds() + 0.05), sleep)
            self._monitor_due = now() + timedelta(seconds=sleep)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connectivity_wakeup.wait(), sleep)


# --- pure helpers -------------------------------------------------------------------------------


def _check_etag(etag: str, resource_id: str, version: int) -> None:
    if etag and etag != current_etag(resource_id, version):
        raise Aborted(
            "the resource changed since it was read (stale etag): read it again and retry",
            metadata={"rule": "etag_mismatch"},
        )


def _check_expiry(violations: Violations, name: str, expire_time: datetime | None) -> None:
    if expire_time is not None and expire_time <= now():
        violations.add(name, "must be in the future")


def _new_meter(organization_id: str, site_id: str, data: MeterInput, moment: datetime) -> Meter:
    assert data.commodity is not None
    assert data.direction is not None
    assert data.register_type is not None
    assert data.state is not None
    assert data.serial_number is not None
    assert data.unit is not None
    assert data.expected_interval_seconds is not None
    return Meter(
        organization_id=organization_id,
        site_id=site_id,
        serial_number=data.serial_number,
        name=(data.name or "").strip(),
        commodity=data.commodity.value,
        direction=data.direction.value,
        unit=data.unit,
        register_type=data.register_type.value,
        multiplier=data.multiplier if data.multiplier is not None else 1.0,
        rollover_value=data.rollover_value,
        expected_interval_seconds=data.expected_interval_seconds,
        labels=dict(data.labels or {}),
        state=data.state.value,
        announced_connectivity=Connectivity.OFFLINE.value,
        version=1,
        create_time=moment,
        update_time=moment,
    )


def _meter_input(meter: Meter) -> MeterInput:
    return MeterInput(
        site_id=meter.site_id,
        serial_number=meter.serial_number,
        name=meter.name,
        commodity=Commodity(meter.commodity),
        direction=Direction(meter.direction),
        unit=meter.unit,
        register_type=RegisterType(meter.register_type),
        multiplier=meter.multiplier,
        rollover_value=meter.rollover_value,
        expected_interval_seconds=meter.expected_interval_seconds,
        labels=dict(meter.labels),
        state=MeterState(meter.state),
    )


def _apply_meter_changes(current: MeterInput, data: MeterInput, paths: Set[str]) -> MeterInput:
    """The meter after the changes named in `paths`; a named field left unset is cleared."""
    cleared = MeterInput(
        site_id="",
        name="",
        multiplier=1.0,
        rollover_value=None,
        expected_interval_seconds=current.expected_interval_seconds,
        labels={},
        state=current.state,
    )
    changes = {}
    for path in paths:
        value = getattr(data, path)
        changes[path] = value if value is not None else getattr(cleared, path)
    return replace(current, **changes)


def _changed_fields(current: MeterInput, merged: MeterInput) -> list[str]:
    names = (
        "site_id",
        "name",
        "multiplier",
        "rollover_value",
        "expected_interval_seconds",
        "labels",
        "state",
    )
    return [name for name in names if getattr(current, name) != getattr(merged, name)]


def _apply_to_meter(meter: Meter, data: MeterInput) -> None:
    assert data.site_id is not None
    assert data.state is not None
    assert data.expected_interval_seconds is not None
    meter.site_id = data.site_id
    meter.name = (data.name or "").strip()
    meter.multiplier = data.multiplier if data.multiplier is not None else 1.0
    meter.rollover_value = data.rollover_value
    meter.expected_interval_seconds = data.expected_interval_seconds
    meter.labels = dict(data.labels or {})
    meter.state = data.state.value


def _plan_rows(
    rows: Sequence[ImportRow],
    default_site: str | None,
    live_sites: Set[str],
    existing: dict[str, Meter],
) -> list[_Step]:
    """What each row would do, given the live sites the rows name and the meters in service
    with their serial numbers. Reads the meters, changes nothing: safe in a worker thread."""
    first_line: dict[str, int] = {}
    plan: list[_Step] = []
    for row in rows:
        values = row.values
        serial = values.serial_number or ""
        # A serial number is at most 64 characters; a longer one is reported shortened.
        echoed = shorten(serial, 65)
        step = _Step(ImportOutcome(row=row.line, action=ImportAction.FAILED, serial_number=echoed))
        errors = Violations()
        for name, description in row.errors:
            errors.add(name, description)
        if serial in first_line:
            errors.add("serial_number", f"appears again (first on line {first_line[serial]})")
        elif serial:
            first_line[serial] = row.line
        site_id = parse_id(values.site_id) if values.site_id else default_site
        if values.site_id and site_id not in live_sites:
            errors.add("site_id", f"site {quoted(values.site_id)} not found")
        meter = existing.get(serial)
        if meter is not None:
            current = _meter_input(meter)
            for name in sorted(IMMUTABLE_METER_FIELDS & row.provided):
                if getattr(values, name) != getattr(current, name):
                    errors.add(
                        API_NAMES.get(name, name),
                        f"cannot change the {name.replace('_', ' ')} of meter {serial} "
                        "(decommission it and create a new one)",
                    )
            # An update moves the meter only if its row names a (live) site.
            moved_to = site_id if values.site_id and site_id in live_sites else meter.site_id
            merged = _apply_meter_changes(
                current,
                replace(values, site_id=moved_to),
                row.provided - IMMUTABLE_METER_FIELDS,
            )
            check_meter(errors, "", merged, API_NAMES)
            changed = _changed_fields(current, merged)
            step.outcome.meter_id = meter.id
            step.outcome.action = ImportAction.UPDATED if changed else ImportAction.UNCHANGED
            if changed:
                step.update = (meter, merged, changed)
        else:
            data = replace(values, site_id=site_id).with_defaults()
            if site_id is None and not values.site_id:
                errors.add("site_id", "is required (a site_id column or the siteId parameter)")
            check_meter(errors, "", replace(data, site_id=site_id or "-"), API_NAMES)
            step.outcome.action = ImportAction.CREATED
            step.create = data
        if errors.items:
            step = _Step(
                ImportOutcome(
                    row=row.line,
                    action=ImportAction.FAILED,
                    serial_number=echoed,
                    errors=list(dict.fromkeys(errors.items)),
                )
            )
        plan.append(step)
    return plan


def _import_violations(failed: list[ImportOutcome]) -> InvalidArgument:
    violations = [
        (f"rows[{outcome.row}].{name}", description)
        for outcome in failed
        for name, description in outcome.errors[:MAX_ROW_ERRORS]
    ]
    shown: list[tuple[str, str]] = []
    used = 0
    for name, description in violations:
        used += len(name.encode()) + len(description.encode())
        if used > IMPORT_VIOLATIONS_BUDGET:
            break
        shown.append((name, description))
    if len(shown) < len(violations):
        more = len(violations) - len(shown)
        shown.append(("rows", f"{more} more problems not shown (validate_only lists every row)"))
    return InvalidArgument(
        shown,
        f"{len(failed)} of the rows are invalid; nothing was imported (all_or_nothing)",
    )
