"""The gRPC adapter: turns requests into domain calls and domain results into responses."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Any

from google.protobuf import empty_pb2, json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from energymesh.devices.v1 import devices_pb2, devices_pb2_grpc
from services.devices.config import DevicesConfig
from services.devices.domain import (
    MAX_ROW_ERRORS,
    MAX_ROWS_WITH_ERRORS,
    DevicesDomain,
    ImportAction,
    ImportSummary,
)
from services.devices.models import IngestKey, MeterToken
from services.devices.repository import METER_SORT_KEYS, SITE_SORT_KEYS, MeterFilters, Ordering
from services.devices.resources import (
    COMMODITIES,
    CONNECTIVITIES,
    DIRECTIONS,
    METER_STATES,
    REGISTER_TYPES,
    assignee_to_proto,
    ingest_key_to_proto,
    meter_to_proto,
    meter_token_to_proto,
    optional_timestamp,
    site_to_proto,
)
from services.devices.users import AuthUsers
from services.devices.validation import MeterInput, SiteInput, parse_id
from services.kernel.errors import InvalidArgument, Unauthenticated, Violations
from services.kernel.interceptors import caller
from services.kernel.pagination import decode_token, encode_token, page_size
from services.kernel.permissions import Permission
from services.kernel.protos import timestamp_or_none

SERVICE = "energymesh.devices.v1.DeviceService"

# Every RPC's access rule. The kernel refuses to start if an RPC is missing here. Viewers are
# further narrowed to their assigned meters by the domain (DATA_READ).
ACCESS: dict[str, Permission] = {
    f"/{SERVICE}/{method}": permission
    for method, permission in {
        "CreateSite": Permission.SITES_MANAGE,
        "GetSite": Permission.DATA_READ,
        "ListSites": Permission.DATA_READ,
        "UpdateSite": Permission.SITES_MANAGE,
        "DeleteSite": Permission.SITES_MANAGE,
        "CreateMeter": Permission.METERS_MANAGE,
        "GetMeter": Permission.DATA_READ,
        "ListMeters": Permission.DATA_READ,
        "UpdateMeter": Permission.METERS_MANAGE,
        # force=true additionally needs DATA_PURGE (admin), checked by the domain.
        "DeleteMeter": Permission.METERS_MANAGE,
        "ImportMeters": Permission.METERS_MANAGE,
        "CreateMeterToken": Permission.CREDENTIALS_MANAGE,
        "ListMeterTokens": Permission.CREDENTIALS_MANAGE,
        "DeleteMeterToken": Permission.CREDENTIALS_MANAGE,
        "CreateIngestKey": Permission.CREDENTIALS_MANAGE,
        "ListIngestKeys": Permission.CREDENTIALS_MANAGE,
        "DeleteIngestKey": Permission.CREDENTIALS_MANAGE,
        "CreateMeterAssignee": Permission.METERS_MANAGE,
        "DeleteMeterAssignee": Permission.METERS_MANAGE,
        "ListMeterAssignees": Permission.ORGANIZATION_READ,
        # The presented credential is the authentication (see the proto's comment).
        "AuthenticateCredential": Permission.PUBLIC,
    }.items()
}

SITE_UPDATABLE = ("name", "time_zone", "address", "latitude", "longitude", "labels")
# API path → domain field, for the mutable meter fields.
METER_UPDATABLE = {
    "site_id": "site_id",
    "name": "name",
    "multiplier": "multiplier",
    "rollover_value": "rollover_value",
    "expected_interval": "expected_interval_seconds",
    "labels": "labels",
    "state": "state",
}
METER_IMMUTABLE = ("serial_number", "commodity", "direction", "unit", "register_type")
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
# Sort keys whose page-token positions are times; the others are text.
TIME_SORT_KEYS = frozenset({"create_time", "last_seen_time"})


def now() -> datetime:
    return datetime.now(UTC)


def enum_value(table: dict[int, Any], value: int, field_name: str, violations: Violations) -> Any:
    """The domain value of a proto enum number; None for UNSPECIFIED."""
    if value == 0:
        return None
    if value not in table:
        violations.add(field_name, f"{value} is not a known value")
        return None
    return table[value]


def site_input(site: devices_pb2.Site) -> SiteInput:
    return SiteInput(
        name=site.name,
        time_zone=site.time_zone,
        address=site.address,
        latitude=site.latitude if site.HasField("latitude") else None,
        longitude=site.longitude if site.HasField("longitude") else None,
        labels=dict(site.labels),
    )


def meter_input(meter: devices_pb2.Meter, violations: Violations) -> MeterInput:
    """The request's meter; fields left at their proto default are None (not given)."""
    interval: int | None = None
    if meter.HasField("expected_interval"):
        if meter.expected_interval.nanos:
            violations.add("meter.expected_interval", "must be whole seconds")
        interval = meter.expected_interval.seconds
    return MeterInput(
        site_id=meter.site_id or None,
        serial_number=meter.serial_number or None,
        name=meter.name or None,
        commodity=enum_value(COMMODITIES, meter.commodity, "meter.commodity", violations),
        direction=enum_value(DIRECTIONS, meter.direction, "meter.direction", violations),
        unit=meter.unit or None,
        register_type=enum_value(
            REGISTER_TYPES, meter.register_type, "meter.register_type", violations
        ),
        multiplier=meter.multiplier if meter.HasField("multiplier") else None,
        rollover_value=meter.rollover_value if meter.HasField("rollover_value") else None,
        expected_interval_seconds=interval,
        labels=dict(meter.labels) or None,
        state=enum_value(METER_STATES, meter.state, "meter.state", violations),
    )


def snake_case(path: str) -> str:
    return _CAMEL.sub("_", path).lower()


def site_paths(request: devices_pb2.UpdateSiteRequest) -> set[str]:
    site = request.site
    paths = {snake_case(path) for path in request.update_mask.paths} - {"etag"}
    unknown = paths - set(SITE_UPDATABLE)
    if unknown:
        raise InvalidArgument([("update_mask", f"cannot update {', '.join(sorted(unknown))}")])
    if not paths:
        set_fields = {field.name for field, _ in site.ListFields()}
        paths = set_fields & set(SITE_UPDATABLE)
    return paths


def meter_paths(request: devices_pb2.UpdateMeterRequest) -> set[str]:
    meter = request.meter
    paths = {snake_case(path) for path in request.update_mask.paths} - {"etag"}
    unknown = paths - set(METER_UPDATABLE) - set(METER_IMMUTABLE)
    if unknown:
        raise InvalidArgument([("update_mask", f"cannot update {', '.join(sorted(unknown))}")])
    if not paths:
        paths = {field.name for field, _ in meter.ListFields()}
    # Immutable fields are compared with the stored meter by the domain, never written.
    return {METER_UPDATABLE[path] for path in paths if path in METER_UPDATABLE}


def ordering(order_by: str, allowed: dict[str, Any]) -> Ordering:
    words = order_by.replace(",", " ").split()
    if not words:
        return Ordering("create_time")
    key = snake_case(words[0])
    descending = len(words) == 2 and words[1].lower() == "desc"
    if (
        key not in allowed
        or len(words) > 2
        or (len(words) == 2 and not descending and words[1].lower() != "asc")
    ):
        raise InvalidArgument(
            [("order_by", f"must be one of {', '.join(allowed)}, optionally followed by desc")]
        )
    return Ordering(key, descending)


def filters_of(request: Message) -> dict[str, Any]:
    """What a page token is bound to: every request field but the page itself."""
    values = json_format.MessageToDict(request, preserving_proto_field_name=True)
    values.pop("page_size", None)
    values.pop("page_token", None)
    return values


def position_of(value: Any, identifier: str) -> list[Any]:
    return [value.isoformat() if isinstance(value, datetime) else value, identifier]


def parse_position(raw: list[Any] | None, key: str) -> tuple[Any, str] | None:
    """The keyset position in a page token, checked against the sort key: a token is only
    opaque, not tamper-proof, and a value of the wrong type must not reach the query."""
    if raw is None:
        return None
    invalid = InvalidArgument([("page_token", "is not a token this API issued")])
    if len(raw) != 2:
        raise invalid
    value, identifier = raw
    if not isinstance(identifier, str) or parse_id(identifier) != identifier:
        raise invalid
    # Every sort key is a time (as RFC 3339 text) or text; PostgreSQL text holds no NUL.
    if not isinstance(value, str) or "\x00" in value:
        raise invalid
    if key not in TIME_SORT_KEYS:
        return value, identifier
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise invalid from None
    if moment.tzinfo is None:
        raise invalid
    return moment, identifier


def sort_value(resource: Any, key: str) -> Any:
    value = getattr(resource, key)
    if key == "last_seen_time" and value is None:
        return datetime(1970, 1, 1, tzinfo=UTC)
    return value


def authorization(context: Any) -> str:
    metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
    return metadata.get("authorization", "")


def import_action(action: ImportAction) -> devices_pb2.ImportMeterResult.Action.ValueType:
    """The API's value of an import action: the same name, prefixed ACTION_."""
    return devices_pb2.ImportMeterResult.Action.Value(f"ACTION_{action.name}")


def import_response(summary: ImportSummary) -> devices_pb2.ImportMetersResponse:
    """One result per row; errors capped (MAX_ROW_ERRORS per row, MAX_ROWS_WITH_ERRORS rows)
    so that the answer stays far below the 4 MiB a gRPC message may have."""
    results = []
    rows_with_errors = 0
    truncated = False
    for outcome in summary.outcomes:
        shown: list[tuple[str, str]] = []
        if outcome.errors:
            if rows_with_errors < MAX_ROWS_WITH_ERRORS:
                rows_with_errors += 1
                shown = outcome.errors[:MAX_ROW_ERRORS]
            truncated = truncated or len(shown) < len(outcome.errors)
        results.append(
            devices_pb2.ImportMeterResult(
                row=outcome.row,
                action=import_action(outcome.action),
                meter_id=outcome.meter_id,
                serial_number=outcome.serial_number,
                errors=[
                    error_details_pb2.BadRequest.FieldViolation(field=name, description=text)
                    for name, text in shown
                ],
            )
        )
    return devices_pb2.ImportMetersResponse(
        results=results,
        created_count=summary.count(ImportAction.CREATED),
        updated_count=summary.count(ImportAction.UPDATED),
        unchanged_count=summary.count(ImportAction.UNCHANGED),
        failed_count=summary.count(ImportAction.FAILED),
        applied=summary.applied,
        errors_truncated=truncated,
    )


class DevicesServicer(devices_pb2_grpc.DeviceServiceServicer):
    def __init__(self, domain: DevicesDomain, users: AuthUsers, config: DevicesConfig) -> None:
        self.domain = domain
        self.users = users
        self.config = config

    # --- sites ----------------------------------------------------------------------------

    async def CreateSite(
        self, request: devices_pb2.CreateSiteRequest, context: Any
    ) -> devices_pb2.Site:
        site = await self.domain.create_site(caller(), site_input(request.site))
        return site_to_proto(site)

    async def GetSite(self, request: devices_pb2.GetSiteRequest, context: Any) -> devices_pb2.Site:
        return site_to_proto(await self.domain.get_site(caller(), request.site_id))

    async def ListSites(
        self, request: devices_pb2.ListSitesRequest, context: Any
    ) -> devices_pb2.ListSitesResponse:
        limit = page_size(request.page_size)
        order = ordering(request.order_by, SITE_SORT_KEYS)
        filters = filters_of(request)
        after = parse_position(decode_token(request.page_token, filters), order.key)
        sites = await self.domain.list_sites(
            caller(), request.query.strip(), order, after, limit + 1
        )
        page, more = sites[:limit], len(sites) > limit
        token = ""
        if more:
            token = encode_token(position_of(sort_value(page[-1], order.key), page[-1].id), filters)
        return devices_pb2.ListSitesResponse(
            sites=[site_to_proto(site) for site in page], next_page_token=token
        )

    async def UpdateSite(
        self, request: devices_pb2.UpdateSiteRequest, context: Any
    ) -> devices_pb2.Site:
        if not request.site.site_id:
            raise InvalidArgument([("site.site_id", "is required")])
        paths = site_paths(request)
        site = await self.domain.update_site(
            caller(), request.site.site_id, site_input(request.site), paths, request.site.etag
        )
        return site_to_proto(site)

    async def DeleteSite(
        self, request: devices_pb2.DeleteSiteRequest, context: Any
    ) -> empty_pb2.Empty:
        await self.domain.delete_site(caller(), request.site_id)
        return empty_pb2.Empty()

    # --- meters ---------------------------------------------------------------------------

    async def CreateMeter(
        self, request: devices_pb2.CreateMeterRequest, context: Any
    ) -> devices_pb2.Meter:
        violations = Violations()
        data = meter_input(request.meter, violations)
        violations.raise_if_any()
        meter = await self.domain.create_meter(caller(), data)
        return meter_to_proto(meter, now())

    async def GetMeter(
        self, request: devices_pb2.GetMeterRequest, context: Any
    ) -> devices_pb2.Meter:
        return meter_to_proto(await self.domain.get_meter(caller(), request.meter_id), now())

    async def ListMeters(
        self, request: devices_pb2.ListMetersRequest, context: Any
    ) -> devices_pb2.ListMetersResponse:
        limit = page_size(request.page_size)
        order = ordering(request.order_by, METER_SORT_KEYS)
        violations = Violations()
        site_id = None
        if request.site_id:
            site_id = parse_id(request.site_id)
            violations.check(site_id is not None, "site_id", "must be a site id (UUID)")
        commodity = enum_value(COMMODITIES, request.commodity, "commodity", violations)
        state = enum_value(METER_STATES, request.state, "state", violations)
        connectivity = enum_value(CONNECTIVITIES, request.connectivity, "connectivity", violations)
        labels: list[tuple[str, str | None]] = []
        for selector in request.labels:
            key, equals, value = selector.partition("=")
            if not key.strip():
                violations.add("labels", f"{selector!r} is not key=value or key")
            labels.append((key.strip(), value if equals else None))
        violations.raise_if_any()
        filters = MeterFilters(
            site_id=site_id,
            commodity=commodity.value if commodity else None,
            state=state.value if state else None,
            connectivity=connectivity,
            labels=tuple(labels),
            query=request.query.strip(),
            show_decommissioned=request.show_decommissioned,
        )
        bound = filters_of(request)
        after = parse_position(decode_token(request.page_token, bound), order.key)
        meters = await self.domain.list_meters(caller(), filters, order, after, limit + 1)
        page, more = meters[:limit], len(meters) > limit
        token = ""
        if more:
            token = encode_token(position_of(sort_value(page[-1], order.key), page[-1].id), bound)
        moment = now()
        return devices_pb2.ListMetersResponse(
            meters=[meter_to_proto(meter, moment) for meter in page], next_page_token=token
        )

    async def UpdateMeter(
        self, request: devices_pb2.UpdateMeterRequest, context: Any
    ) -> devices_pb2.Meter:
        if not request.meter.meter_id:
            raise InvalidArgument([("meter.meter_id", "is required")])
        paths = meter_paths(request)
        violations = Violations()
        data = meter_input(request.meter, violations)
        violations.raise_if_any()
        meter = await self.domain.update_meter(
            caller(), request.meter.meter_id, data, paths, request.meter.etag
        )
        return meter_to_proto(meter, now())

    async def DeleteMeter(
        self, request: devices_pb2.DeleteMeterRequest, context: Any
    ) -> empty_pb2.Empty:
        await self.domain.delete_meter(caller(), request.meter_id, force=request.force)
        return empty_pb2.Empty()

    async def ImportMeters(
        self, request: devices_pb2.ImportMetersRequest, context: Any
    ) -> devices_pb2.ImportMetersResponse:
        summary = await self.domain.import_meters(
            caller(),
            request.csv.data,
            request.site_id,
            max_bytes=self.config.import_max_bytes,
            max_rows=self.config.import_max_rows,
            validate_only=request.validate_only,
            all_or_nothing=request.all_or_nothing,
        )
        return await asyncio.to_thread(import_response, summary)

    # --- credentials ----------------------------------------------------------------------

    async def CreateMeterToken(
        self, request: devices_pb2.CreateMeterTokenRequest, context: Any
    ) -> devices_pb2.CreateMeterTokenResponse:
        issued = await self.domain.create_meter_token(
            caller(),
            request.meter_id,
            request.display_name,
            timestamp_or_none(request, "expire_time"),
        )
        assert isinstance(issued.row, MeterToken)
        return devices_pb2.CreateMeterTokenResponse(
            meter_token=meter_token_to_proto(issued.row), token=issued.secret
        )

    async def ListMeterTokens(
        self, request: devices_pb2.ListMeterTokensRequest, context: Any
    ) -> devices_pb2.ListMeterTokensResponse:
        tokens = await self.domain.list_meter_tokens(caller(), request.meter_id)
        return devices_pb2.ListMeterTokensResponse(
            meter_tokens=[meter_token_to_proto(token) for token in tokens]
        )

    async def DeleteMeterToken(
        self, request: devices_pb2.DeleteMeterTokenRequest, context: Any
    ) -> empty_pb2.Empty:
        await self.domain.delete_meter_token(caller(), request.meter_id, request.token_id)
        return empty_pb2.Empty()

    async def CreateIngestKey(
        self, request: devices_pb2.CreateIngestKeyRequest, context: Any
    ) -> devices_pb2.CreateIngestKeyResponse:
        key = request.ingest_key
        issued = await self.domain.create_ingest_key(
            caller(), key.display_name, key.site_id, timestamp_or_none(key, "expire_time")
        )
        assert isinstance(issued.row, IngestKey)
        return devices_pb2.CreateIngestKeyResponse(
            ingest_key=ingest_key_to_proto(issued.row), key=issued.secret
        )

    async def ListIngestKeys(
        self, request: devices_pb2.ListIngestKeysRequest, context: Any
    ) -> devices_pb2.ListIngestKeysResponse:
        keys = await self.domain.list_ingest_keys(caller())
        return devices_pb2.ListIngestKeysResponse(
            ingest_keys=[ingest_key_to_proto(key) for key in keys]
        )

    async def DeleteIngestKey(
        self, request: devices_pb2.DeleteIngestKeyRequest, context: Any
    ) -> empty_pb2.Empty:
        await self.domain.delete_ingest_key(caller(), request.ingest_key_id)
        return empty_pb2.Empty()

    async def AuthenticateCredential(
        self, request: devices_pb2.AuthenticateCredentialRequest, context: Any
    ) -> devices_pb2.AuthenticateCredentialResponse:
        found = await self.domain.authenticate_credential(request.credential)
        kind = (
            devices_pb2.AuthenticateCredentialResponse.KIND_METER_TOKEN
            if found.kind == "emt"
            else devices_pb2.AuthenticateCredentialResponse.KIND_INGEST_KEY
        )
        return devices_pb2.AuthenticateCredentialResponse(
            kind=kind,
            credential_id=found.credential_id,
            organization_id=found.organization_id,
            site_id=found.site_id or "",
            meter_ids=found.meter_ids,
            expire_time=optional_timestamp(found.expire_time),
        )

    # --- assignments ----------------------------------------------------------------------

    async def CreateMeterAssignee(
        self, request: devices_pb2.CreateMeterAssigneeRequest, context: Any
    ) -> devices_pb2.MeterAssignee:
        token = authorization(context)
        if not token:
            raise Unauthenticated("a bearer access token is required")
        assignee = await self.domain.create_meter_assignee(
            caller(), request.meter_id, request.user_id, self.users.checker(token)
        )
        return assignee_to_proto(assignee)

    async def DeleteMeterAssignee(
        self, request: devices_pb2.DeleteMeterAssigneeRequest, context: Any
    ) -> empty_pb2.Empty:
        await self.domain.delete_meter_assignee(caller(), request.meter_id, request.user_id)
        return empty_pb2.Empty()

    async def ListMeterAssignees(
        self, request: devices_pb2.ListMeterAssigneesRequest, context: Any
    ) -> devices_pb2.ListMeterAssigneesResponse:
        assignees = await self.domain.list_meter_assignees(caller(), request.meter_id)
        return devices_pb2.ListMeterAssigneesResponse(
            meter_assignees=[assignee_to_proto(assignee) for assignee in assignees]
        )
