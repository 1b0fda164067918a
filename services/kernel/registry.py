"""The device registry as other services see it: its gRPC contract, called on a user's behalf.

Meter and site lookups forward the caller's `authorization` metadata to DeviceService, so
another organization's meter, or a meter a viewer is not assigned to, is NOT_FOUND exactly as
in the registry. Answers are cached briefly per user and meter or site."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from energymesh.devices.v1 import devices_pb2, devices_pb2_grpc
from services.kernel.context import Caller, current_trace
from services.kernel.errors import NotFound, PermissionDenied, Unauthenticated, Unavailable

TIMEOUT_SECONDS = 5.0
MAX_CACHED_METERS = 100_000

T = TypeVar("T")


class DeviceRegistry:
    def __init__(self, address: str, cache_seconds: float) -> None:
        self._channel = grpc.aio.insecure_channel(address)
        self.stub = devices_pb2_grpc.DeviceServiceStub(self._channel)
        self.cache_seconds = cache_seconds
        self._meters: dict[tuple[str, str, str], tuple[devices_pb2.Meter, float]] = {}
        self._sites: dict[tuple[str, str, str], tuple[devices_pb2.Site, float]] = {}

    @staticmethod
    def metadata(authorization: str | None = None) -> list[tuple[str, str]]:
        """The caller's credential (if any) and the current trace, for a registry call."""
        metadata = [("authorization", authorization)] if authorization else []
        trace = current_trace.get()
        if trace is not None:
            metadata.append(("traceparent", trace.traceparent))
        return metadata

    async def call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Runs a registry call, turning its failures into this service's domain errors."""
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                raise Unauthenticated(error.details() or "not authenticated") from None
            if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise NotFound(f"{what} not found", metadata={"resource": "meter"}) from None
            if code == grpc.StatusCode.PERMISSION_DENIED:
                raise PermissionDenied(error.details() or "permission denied") from None
            raise Unavailable(f"the device registry is unavailable ({code.name}); retry") from None

    async def visible_meter(
        self, caller: Caller, authorization: str, meter_id: str
    ) -> devices_pb2.Meter:
        """The meter as the caller may see it (GetMeter on their behalf), else NotFound."""
        key = (caller.user_id, caller.role.value, meter_id)
        cached = self._meters.get(key)
        if cached is not None and time.monotonic() - cached[1] < self.cache_seconds:
            return cached[0]
        meter = await self.call(
            f"meter {meter_id!r}",
            lambda: self.stub.GetMeter(
                devices_pb2.GetMeterRequest(meter_id=meter_id),
                metadata=self.metadata(authorization),
                timeout=TIMEOUT_SECONDS,
            ),
        )
        if meter.organization_id != caller.organization_id:
            raise NotFound(f"meter {meter_id!r} not found", metadata={"resource": "meter"})
        if len(self._meters) > MAX_CACHED_METERS:
            self._meters.clear()
        self._meters[key] = (meter, time.monotonic())
        return meter

    async def visible_site(
        self, caller: Caller, authorization: str, site_id: str
    ) -> devices_pb2.Site:
        """The site as the caller may see it (GetSite on their behalf: another organization's,
        or one holding none of a viewer's meters, is NotFound), cached like meters."""
        key = (caller.user_id, caller.role.value, site_id)
        cached = self._sites.get(key)
        if cached is not None and time.monotonic() - cached[1] < self.cache_seconds:
            return cached[0]
        try:
            site = await self.call(
                f"site {site_id!r}",
                lambda: self.stub.GetSite(
                    devices_pb2.GetSiteRequest(site_id=site_id),
                    metadata=self.metadata(authorization),
                    timeout=TIMEOUT_SECONDS,
                ),
            )
        except NotFound:
            site = None
        if site is None or site.organization_id != caller.organization_id:
            raise NotFound(f"site {site_id!r} not found", metadata={"resource": "site"})
        if len(self._sites) > MAX_CACHED_METERS:
            self._sites.clear()
        self._sites[key] = (site, time.monotonic())
        return site

    async def visible_meters(
        self, authorization: str, site_id: str = ""
    ) -> list[devices_pb2.Meter]:
        """Every meter the caller may see (a viewer: those assigned to them), decommissioned
        ones included, optionally of one site."""
        meters: list[devices_pb2.Meter] = []
        token = ""
        while True:
            request = devices_pb2.ListMetersRequest(
                page_size=1000, page_token=token, site_id=site_id, show_decommissioned=True
            )
            page = await self.call(
                "meters",
                lambda request=request: self.stub.ListMeters(  # type: ignore[misc]
                    request, metadata=self.metadata(authorization), timeout=TIMEOUT_SECONDS
                ),
            )
            meters.extend(page.meters)
            token = page.next_page_token
            if not token:
                return meters

    def forget_meter(self, meter_id: str) -> None:
        """Drops cached lookups of a meter that changed (reassigned, decommissioned ...)."""
        for key in [key for key in self._meters if key[2] == meter_id]:
            del self._meters[key]

    async def close(self) -> None:
        await self._channel.close()
