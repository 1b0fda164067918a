"""Tariffs, their assignment to sites and emission factors: the organization's definitions
that price the rollups.

Every change that alters a price publishes `analytics.pricing.changed` through the outbox in
the same transaction, naming the meters concerned (organization, site, commodity, direction)
and the time range; services/analytics/pricing.py reprices their stored rollups from it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

from google.protobuf import timestamp_pb2
from sqlalchemy.ext.asyncio import AsyncSession

from energymesh.analytics.v1 import analytics_pb2
from energymesh.devices.v1 import devices_pb2
from services.analytics import tariff_repository
from services.analytics.events import PRICING_CHANGED
from services.analytics.models import EmissionFactor, Tariff, TariffAssignment
from services.analytics.pricing import PricingChange
from services.analytics.tariff_validation import (
    DIRECTIONS,
    check_commodity,
    check_currency,
    check_emission_factor,
    check_tariff,
    versions_from_json,
    versions_to_json,
)
from services.kernel.context import Caller
from services.kernel.database import Database
from services.kernel.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Violations,
)
from services.kernel.outbox import Outbox
from services.kernel.pagination import decode_token, encode_token, page_size
from services.kernel.protos import timestamp
from services.kernel.registry import DeviceRegistry

MAX_TARIFFS = 1000
MAX_EMISSION_FACTORS = 1000
TARIFF_FIELDS = ("name", "versions")
T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str


def now() -> datetime:
    return datetime.now(UTC)


def parse_id(violations: Violations, field: str, value: str) -> str:
    """A resource id from the request: required, a UUID."""
    if not value:
        violations.add(field, "is required")
        return ""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        violations.add(field, "must be an id (UUID)")
        return ""


def etag(resource_id: str, version: int) -> str:
    """Opaque and changes with every write."""
    return hashlib.sha256(f"{resource_id}:{version}".encode()).hexdigest()[:20]


def _ms(moment: timestamp_pb2.Timestamp) -> int:
    return moment.ToMilliseconds()


def _span(versions: Sequence[analytics_pb2.TariffVersion]) -> tuple[int | None, int | None]:
    """The time range versions cover together (None: open)."""
    if not versions:
        return None, None
    start = min(_ms(version.effective_from) for version in versions)
    ends = [_ms(v.effective_to) if v.HasField("effective_to") else None for v in versions]
    return start, None if None in ends else max(end for end in ends if end is not None)


def _union(*spans: tuple[int | None, int | None]) -> tuple[int | None, int | None]:
    starts = [start for start, _ in spans]
    ends = [end for _, end in spans]
    return (
        None if None in starts else min(s for s in starts if s is not None),
        None if None in ends else max(e for e in ends if e is not None),
    )


# --- resources -----------------------------------------------------------------------------------


def tariff_to_proto(tariff: Tariff) -> analytics_pb2.Tariff:
    return analytics_pb2.Tariff(
        tariff_id=tariff.id,
        name=tariff.name,
        currency_code=tariff.currency_code,
        versions=versions_from_json(tariff.versions),
        create_time=timestamp(tariff.create_time),
        update_time=timestamp(tariff.update_time),
        etag=etag(tariff.id, tariff.version),
    )


def assignment_to_proto(assignment: TariffAssignment) -> analytics_pb2.TariffAssignment:
    return analytics_pb2.TariffAssignment(
        assignment_id=assignment.id,
        site_id=assignment.site_id,
        tariff_id=assignment.tariff_id,
        commodity=assignment.commodity,  # type: ignore[arg-type]
        direction=assignment.direction,  # type: ignore[arg-type]
    )


def emission_factor_to_proto(factor: EmissionFactor) -> analytics_pb2.EmissionFactor:
    return analytics_pb2.EmissionFactor(
        emission_factor_id=factor.id,
        commodity=factor.commodity,  # type: ignore[arg-type]
        kg_per_unit=factor.kg_per_unit,
        effective_from=timestamp(factor.effective_from),
        effective_to=timestamp(factor.effective_to) if factor.effective_to else None,
    )


class TariffCatalog:
    def __init__(self, database: Database, outbox: Outbox, devices: DeviceRegistry) -> None:
        self.database = database
        self.outbox = outbox
        self.devices = devices

    async def _changed(self, session: AsyncSession, change: PricingChange) -> None:
        await self.outbox.add(session, PRICING_CHANGED, change.to_event())

    async def _tariff(
        self, session: AsyncSession, caller: Caller, tariff_id: str, *, lock: str | None = None
    ) -> Tariff:
        found = await tariff_repository.tariff(
            session, caller.organization_id, tariff_id, lock=lock
        )
        if found is None:
            raise NotFound(f"tariff {tariff_id!r} not found", metadata={"resource": "tariff"})
        return found

    async def _visible_site(self, caller: Caller, authorization: str, site_id: str) -> None:
        await self.devices.visible_site(caller, authorization, site_id)

    # --- tariffs ---------------------------------------------------------------------------

    async def create_tariff(self, caller: Caller, data: analytics_pb2.Tariff) -> Tariff:
        violations = Violations()
        check_tariff(violations, "tariff.", data)
        violations.raise_if_any()
        moment = now()
        async with self.database.transaction() as session:
            if (
                await tariff_repository.count_tariffs(session, caller.organization_id)
                >= MAX_TARIFFS
            ):
                raise ResourceExhausted(f"an organization has at most {MAX_TARIFFS} tariffs")
            tariff = Tariff(
                id=str(uuid.uuid4()),
                organization_id=caller.organization_id,
                name=data.name.strip(),
                currency_code=data.currency_code,
                versions=versions_to_json(data.versions),
                version=1,
                create_time=moment,
                update_time=moment,
            )
            session.add(tariff)
        # Not assigned yet: nothing to reprice.
        return tariff

    async def get_tariff(self, caller: Caller, tariff_id: str) -> Tariff:
        violations = Violations()
        parsed = parse_id(violations, "tariff_id", tariff_id)
        violations.raise_if_any()
        async with self.database.transaction() as session:
            return await self._tariff(session, caller, parsed)

    async def list_tariffs(self, caller: Caller, size: int, token: str) -> Page[Tariff]:
        limit = page_size(size)
        position = decode_token(token)
        after = None
        if position is not None:
            if len(position) != 2 or not all(isinstance(item, str) for item in position):
                raise InvalidArgument([("page_token", "is not a token this API issued")])
            after = (position[0], position[1])
        async with self.database.transaction() as session:
            found = await tariff_repository.list_tariffs(
                session, caller.organization_id, after, limit + 1
            )
        page = found[:limit]
        next_token = encode_token([page[-1].name, page[-1].id]) if len(found) > limit else ""
        return Page(page, next_token)

    async def update_tariff(
        self, caller: Caller, data: analytics_pb2.Tariff, paths: set[str]
    ) -> Tariff:
        violations = Violations()
        tariff_id = parse_id(violations, "tariff.tariff_id", data.tariff_id)
        if data.currency_code:
            check_currency(violations, "tariff.currency_code", data.currency_code)
        violations.raise_if_any()
        async with self.database.transaction() as session:
            tariff = await self._tariff(session, caller, tariff_id, lock="update")
            if data.currency_code and data.currency_code != tariff.currency_code:
                raise InvalidArgument(
                    [("tariff.currency_code", "cannot be changed: create another tariff")]
                )
            current = tariff_to_proto(tariff)
            merged = analytics_pb2.Tariff()
            merged.CopyFrom(current)
            if "name" in paths:
                merged.name = data.name
            if "versions" in paths:
                del merged.versions[:]
                merged.versions.extend(data.versions)
            check_tariff(violations, "tariff.", merged)
            violations.raise_if_any()
            if data.etag and data.etag != current.etag:
                raise Aborted(
                    "the tariff changed since it was read (stale etag): read it again and retry",
                    metadata={"rule": "etag_mismatch"},
                )
            new_versions = versions_to_json(merged.versions)
            name_changed = merged.name.strip() != tariff.name
            versions_changed = new_versions != tariff.versions
            if not (name_changed or versions_changed):
                return tariff
            if versions_changed:
                span = _union(_span(current.versions), _span(merged.versions))
                for assignment in await tariff_repository.assignments_of_tariff(session, tariff.id):
                    await self._changed(
                        session, _assignment_change(assignment, span, "tariff.updated")
                    )
            tariff.name = merged.name.strip()
            tariff.versions = new_versions
            tariff.version += 1
            tariff.update_time = now()
        self.outbox.wake()
        return tariff

    async def delete_tariff(self, caller: Caller, tariff_id: str) -> None:
        violations = Violations()
        parsed = parse_id(violations, "tariff_id", tariff_id)
        violations.raise_if_any()
        async with self.database.transaction() as session:
            tariff = await self._tariff(session, caller, parsed, lock="update")
            assignments = await tariff_repository.assignments_of_tariff(session, tariff.id)
            for assignment in assignments:
                await self._changed(
                    session, _assignment_change(assignment, (None, None), "tariff.deleted")
                )
            await tariff_repository.delete_assignments(session, [a.id for a in assignments])
            await session.delete(tariff)
        self.outbox.wake()

    # --- assignments -----------------------------------------------------------------------

    async def create_assignment(
        self,
        caller: Caller,
        authorization: str,
        site_id: str,
        data: analytics_pb2.TariffAssignment,
    ) -> TariffAssignment:
        violations = Violations()
        site = parse_id(violations, "site_id", site_id)
        tariff_id = parse_id(violations, "assignment.tariff_id", data.tariff_id)
        check_commodity(violations, "assignment.commodity", data.commodity)
        direction = data.direction or devices_pb2.FLOW_DIRECTION_IMPORT
        if direction not in DIRECTIONS:
            violations.add("assignment.direction", "must be IMPORT or EXPORT")
        violations.raise_if_any()
        await self._visible_site(caller, authorization, site)
        async with self.database.transaction() as session:
            # Shared lock: the tariff cannot be deleted under the new assignment.
            await self._tariff(session, caller, tariff_id, lock="share")
            assignment = TariffAssignment(
                id=str(uuid.uuid4()),
                organization_id=caller.organization_id,
                site_id=site,
                tariff_id=tariff_id,
                commodity=data.commodity,
                direction=direction,
                create_time=now(),
            )
            await tariff_repository.put_assignment(
                session,
                {
                    "id": assignment.id,
                    "organization_id": assignment.organization_id,
                    "site_id": assignment.site_id,
                    "tariff_id": assignment.tariff_id,
                    "commodity": assignment.commodity,
                    "direction": assignment.direction,
                    "create_time": assignment.create_time,
                },
            )
            await self._changed(
                session,
                _assignment_change(assignment, (None, None), "tariff_assignment.created"),
            )
        self.outbox.wake()
        return assignment

    async def list_assignments(
        self, caller: Caller, authorization: str, site_id: str
    ) -> list[TariffAssignment]:
        violations = Violations()
        site = parse_id(violations, "site_id", site_id)
        violations.raise_if_any()
        await self._visible_site(caller, authorization, site)
        async with self.database.transaction() as session:
            return await tariff_repository.assignments_of_site(
                session, caller.organization_id, site
            )

    async def delete_assignment(self, caller: Caller, site_id: str, assignment_id: str) -> None:
        violations = Violations()
        site = parse_id(violations, "site_id", site_id)
        parsed = parse_id(violations, "assignment_id", assignment_id)
        violations.raise_if_any()
        async with self.database.transaction() as session:
            assignment = await tariff_repository.assignment(
                session, caller.organization_id, site, parsed
            )
            if assignment is None:
                raise NotFound(
                    f"tariff assignment {assignment_id!r} not found",
                    metadata={"resource": "tariff_assignment"},
                )
            await self._changed(
                session,
                _assignment_change(assignment, (None, None), "tariff_assignment.deleted"),
            )
            await tariff_repository.delete_assignments(session, [assignment.id])
        self.outbox.wake()

    # --- emission factors ------------------------------------------------------------------

    async def create_emission_factor(
        self, caller: Caller, data: analytics_pb2.EmissionFactor
    ) -> EmissionFactor:
        violations = Violations()
        check_emission_factor(violations, "emission_factor.", data)
        violations.raise_if_any()
        factor = EmissionFactor(
            id=str(uuid.uuid4()),
            organization_id=caller.organization_id,
            commodity=data.commodity,
            kg_per_unit=data.kg_per_unit,
            effective_from=data.effective_from.ToDatetime(tzinfo=UTC),
            effective_to=(
                data.effective_to.ToDatetime(tzinfo=UTC) if data.HasField("effective_to") else None
            ),
            create_time=now(),
        )
        async with self.database.transaction() as session:
            await tariff_repository.lock_emission_factors(
                session, caller.organization_id, factor.commodity
            )
            overlapping = await tariff_repository.overlapping_emission_factor(
                session,
                caller.organization_id,
                factor.commodity,
                factor.effective_from,
                factor.effective_to,
            )
            if overlapping is not None:
                raise FailedPrecondition(
                    "the organization already has an emission factor of this commodity in force "
                    "in that time range: delete it or end it earlier",
                    metadata={
                        "rule": "emission_factor_overlap",
                        "emission_factor_id": overlapping.id,
                    },
                )
            count = await tariff_repository.count_emission_factors(session, caller.organization_id)
            if count >= MAX_EMISSION_FACTORS:
                raise ResourceExhausted(
                    f"an organization has at most {MAX_EMISSION_FACTORS} emission factors"
                )
            session.add(factor)
            await self._changed(session, _factor_change(factor, "emission_factor.created"))
        self.outbox.wake()
        return factor

    async def list_emission_factors(
        self, caller: Caller, commodity: int, size: int, token: str
    ) -> Page[EmissionFactor]:
        violations = Violations()
        if commodity:
            check_commodity(violations, "commodity", commodity)
        violations.raise_if_any()
        limit = page_size(size)
        filters = {"commodity": commodity}
        position = decode_token(token, filters)
        after = None
        if position is not None:
            try:
                after = (int(position[0]), datetime.fromisoformat(position[1]), str(position[2]))
            except (ValueError, TypeError, IndexError) as error:
                raise InvalidArgument([("page_token", "is not a token this API issued")]) from error
        async with self.database.transaction() as session:
            found = await tariff_repository.list_emission_factors(
                session, caller.organization_id, commodity or None, after, limit + 1
            )
        page = found[:limit]
        next_token = ""
        if len(found) > limit:
            last = page[-1]
            next_token = encode_token(
                [last.commodity, last.effective_from.isoformat(), last.id], filters
            )
        return Page(page, next_token)

    async def delete_emission_factor(self, caller: Caller, factor_id: str) -> None:
        violations = Violations()
        parsed = parse_id(violations, "emission_factor_id", factor_id)
        violations.raise_if_any()
        async with self.database.transaction() as session:
            factor = await tariff_repository.emission_factor(
                session, caller.organization_id, parsed
            )
            if factor is None:
                raise NotFound(
                    f"emission factor {factor_id!r} not found",
                    metadata={"resource": "emission_factor"},
                )
            await tariff_repository.lock_emission_factors(
                session, caller.organization_id, factor.commodity
            )
            await self._changed(session, _factor_change(factor, "emission_factor.deleted"))
            await session.delete(factor)
        self.outbox.wake()


def _assignment_change(
    assignment: TariffAssignment, span: tuple[int | None, int | None], reason: str
) -> PricingChange:
    return PricingChange(
        organization_id=assignment.organization_id,
        commodity=assignment.commodity,
        site_id=assignment.site_id,
        direction=assignment.direction,
        start_ms=span[0],
        end_ms=span[1],
        reason=reason,
    )


def _factor_change(factor: EmissionFactor, reason: str) -> PricingChange:
    return PricingChange(
        organization_id=factor.organization_id,
        commodity=factor.commodity,
        direction=devices_pb2.FLOW_DIRECTION_IMPORT,
        start_ms=_to_ms(factor.effective_from),
        end_ms=_to_ms(factor.effective_to) if factor.effective_to is not None else None,
        reason=reason,
    )


def _to_ms(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
