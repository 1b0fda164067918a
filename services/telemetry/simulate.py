"""Meter simulator built on the client library: N meters of mixed commodities streaming
cumulative registers with a daily profile.

    python -m services.telemetry.simulate --gateway 127.0.0.1:8080 --meters 20 --live
    python -m services.telemetry.simulate --gateway … --days 30 --interval 900   # backfill

It first backfills --days of history, then with --live streams from now on. Without
--ingest-key and --meter-ids it signs up a demo organization (REST through the gateway is not
needed: it uses the auth, devices and analytics gRPC contracts through Envoy), creates a site
in Europe/Berlin, the meters, an ingest key, a day/night tariff for the site's electricity and
a grid emission factor, then streams. The profile, in the site's local time: night 0.5x,
morning 1.2x, day 0.8x, evening 1.5x, late evening 0.7x, weekends 1.1x, plus noise; counters
grow by the consumption of each interval and now and then reset to zero (a meter exchange).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import grpc
from google.protobuf import timestamp_pb2

from energymesh.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from energymesh.auth.v1 import auth_pb2, auth_pb2_grpc
from energymesh.devices.v1 import devices_pb2, devices_pb2_grpc
from services.telemetry.client import ReadingStream

COMMODITIES = (
    # commodity, unit, mean consumption per hour in that unit
    (devices_pb2.COMMODITY_ELECTRICITY, "kWh", 12.0),
    (devices_pb2.COMMODITY_GAS, "m3", 1.5),
    (devices_pb2.COMMODITY_WATER, "m3", 0.3),
    (devices_pb2.COMMODITY_HEAT, "kWh", 8.0),
)
RESET_PROBABILITY = 1e-4  # per reading
DEMO_PASSWORD = "demo password, change me"  # a throwaway demo account
SITE_ZONE = ZoneInfo("Europe/Berlin")


def profile(moment: float) -> float:
    """Consumption factor at a Unix time, by the site's local hour and weekday."""
    local = datetime.fromtimestamp(moment, SITE_ZONE)
    hour, weekday = local.hour, local.weekday()
    if hour < 6:
        factor = 0.5
    elif hour < 9:
        factor = 1.2
    elif hour < 17:
        factor = 0.8
    elif hour < 21:
        factor = 1.5
    else:
        factor = 0.7
    return factor * (1.1 if weekday >= 5 else 1.0)


@dataclass
class SimulatedMeter:
    meter_id: str
    per_hour: float
    register: float = 0.0

    def reading(self, moment: float, interval: float, rng: random.Random) -> float:
        if rng.random() < RESET_PROBABILITY:
            self.register = 0.0
        noise = max(0.0, rng.gauss(1.0, 0.15))
        self.register += self.per_hour * interval / 3600 * profile(moment) * noise
        return round(self.register, 3)


async def bootstrap(channel: grpc.aio.Channel, meters: int) -> tuple[str, list[SimulatedMeter]]:
    """A demo organization with a site, meters and an ingest key."""
    auth = auth_pb2_grpc.AuthServiceStub(channel)
    devices = devices_pb2_grpc.DeviceServiceStub(channel)
    email = f"demo-{uuid.uuid4().hex[:8]}@example.com"
    session = await auth.Register(
        auth_pb2.RegisterRequest(
            email=email,
            password=DEMO_PASSWORD,
            display_name="Demo",
            organization_name="Demo Utility",
        )
    )
    metadata = (("authorization", f"Bearer {session.access_token}"),)
    print(f"demo organization: sign in as {email} / 'demo password, change me'")
    site = await devices.CreateSite(
        devices_pb2.CreateSiteRequest(
            site=devices_pb2.Site(name="Demo campus", time_zone="Europe/Berlin")
        ),
        metadata=metadata,
    )
    simulated = []
    for i in range(meters):
        commodity, unit, per_hour = COMMODITIES[i % len(COMMODITIES)]
        meter = await devices.CreateMeter(
            devices_pb2.CreateMeterRequest(
                meter=devices_pb2.Meter(
                    site_id=site.site_id,
                    serial_number=f"SIM-{uuid.uuid4().hex[:10].upper()}",
                    name=f"Simulated {devices_pb2.Commodity.Name(commodity).lower()} {i + 1}",
                    commodity=commodity,
                    unit=unit,
                    register_type=devices_pb2.REGISTER_TYPE_CUMULATIVE,
                )
            ),
            metadata=metadata,
        )
        simulated.append(SimulatedMeter(meter.meter_id, per_hour * random.uniform(0.5, 2)))  # noqa: S311
    key = await devices.CreateIngestKey(
        devices_pb2.CreateIngestKeyRequest(
            ingest_key=devices_pb2.IngestKey(display_name="simulator")
        ),
        metadata=metadata,
    )
    await price_electricity(channel, metadata, site.site_id)
    print(f"meters: {', '.join(m.meter_id for m in simulated[:3])}{' …' if meters > 3 else ''}")
    return key.key, simulated


async def price_electricity(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], site_id: str
) -> None:
    """A day/night tariff (weekdays 08:00-20:00 at the peak price) for the site's electricity
    and a grid emission factor, so consumption comes with cost and CO2."""
    analytics = analytics_pb2_grpc.AnalyticsServiceStub(channel)
    since = timestamp_pb2.Timestamp(seconds=int(time.time()) - 400 * 86400)
    tariff = await analytics.CreateTariff(
        analytics_pb2.CreateTariffRequest(
            tariff=analytics_pb2.Tariff(
                name="Day/night",
                currency_code="EUR",
                versions=[
                    analytics_pb2.TariffVersion(
                        effective_from=since,
                        flat_price=0.22,
                        standing_charge_per_day=0.45,
                        windows=[
                            analytics_pb2.TimeOfUseWindow(
                                price=0.38,
                                start_minute=8 * 60,
                                end_minute=20 * 60,
                                day_types=[analytics_pb2.DAY_TYPE_WEEKDAY],
                            )
                        ],
                    )
                ],
            )
        ),
        metadata=metadata,
    )
    await analytics.CreateTariffAssignment(
        analytics_pb2.CreateTariffAssignmentRequest(
            site_id=site_id,
            assignment=analytics_pb2.TariffAssignment(
                tariff_id=tariff.tariff_id, commodity=devices_pb2.COMMODITY_ELECTRICITY
            ),
        ),
        metadata=metadata,
    )
    await analytics.CreateEmissionFactor(
        analytics_pb2.CreateEmissionFactorRequest(
            emission_factor=analytics_pb2.EmissionFactor(
                commodity=devices_pb2.COMMODITY_ELECTRICITY, kg_per_unit=0.38, effective_from=since
            )
        ),
        metadata=metadata,
    )
    print(f"site {site_id}: electricity priced with the day/night tariff {tariff.tariff_id}")


def progress(done: int, total: int | None, started: float, stream: ReadingStream) -> None:
    rate = done / max(1e-9, time.monotonic() - started)
    if total:
        width = 30
        filled = int(width * done / total)
        bar = "#" * filled + "-" * (width - filled)
        text = f"[{bar}] {done:,}/{total:,} readings"
    else:
        text = f"{done:,} readings"
    sys.stderr.write(
        f"\r{text}  {rate:,.0f}/s  acked {stream.acked_batches} batches, "
        f"{stream.unacked} in flight, {stream.reconnects} reconnects   "
    )
    sys.stderr.flush()


async def wait_for_gateway(target: str, wait_seconds: float) -> None:
    deadline = time.monotonic() + wait_seconds
    while True:
        async with grpc.aio.insecure_channel(target) as channel:
            try:
                await asyncio.wait_for(channel.channel_ready(), 2)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
        await asyncio.sleep(1)


async def live(
    stream: ReadingStream,
    meters: list[SimulatedMeter],
    interval: float,
    acceleration: float,
    rng: random.Random,
) -> None:
    """Streams readings timed now, forever. Timestamps are real (the server refuses the
    future); acceleration makes each real tick of interval/acceleration seconds consume a
    whole interval."""
    started = time.monotonic()
    done = 0
    while True:
        moment = time.time()
        for meter in meters:
            await stream.add(
                meter.meter_id, int(moment * 1000), meter.reading(moment, interval, rng)
            )
            done += 1
        await stream.flush()
        progress(done, None, started, stream)
        await asyncio.sleep(interval / acceleration)


async def run(args: argparse.Namespace) -> None:
    if args.wait:
        await wait_for_gateway(args.gateway, 300)
        await asyncio.sleep(5)  # the services report SERVING before Envoy routes to them
    rng = random.Random(args.seed)  # noqa: S311
    async with grpc.aio.insecure_channel(args.gateway) as channel:
        if args.ingest_key and args.meter_ids:
            key = args.ingest_key
            meters = [
                SimulatedMeter(meter_id, COMMODITIES[i % 4][2])
                for i, meter_id in enumerate(args.meter_ids.split(","))
            ]
        else:
            key, meters = await bootstrap(channel, args.meters)
        stream = ReadingStream(channel, key, batch_size=args.batch_size)
        interval = args.interval
        started = time.monotonic()
        done = 0
        end = time.time() - interval
        moment = end - args.days * 86400
        steps = math.floor((end - moment) / interval)
        total = steps * len(meters)
        for _ in range(steps):
            for meter in meters:
                await stream.add(
                    meter.meter_id, int(moment * 1000), meter.reading(moment, interval, rng)
                )
                done += 1
            if done % 10_000 < len(meters):
                progress(done, total, started, stream)
            moment += interval
        progress(done, total, started, stream)
        sys.stderr.write("\n")
        if args.live:
            await live(stream, meters, interval, args.acceleration, rng)
        await stream.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.telemetry.simulate")
    parser.add_argument("--gateway", default="127.0.0.1:8080", help="gRPC address (Envoy)")
    parser.add_argument("--meters", type=int, default=20)
    parser.add_argument("--interval", type=float, default=900, help="seconds between readings")
    parser.add_argument("--days", type=float, default=7, help="history to backfill")
    parser.add_argument(
        "--live", action="store_true", help="after the backfill, stream from now on, forever"
    )
    parser.add_argument(
        "--acceleration", type=float, default=300.0, help="live: simulated seconds per second"
    )
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--ingest-key", help="use this key instead of creating an org")
    parser.add_argument("--meter-ids", help="comma-separated meter ids (with --ingest-key)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--wait", action="store_true", help="wait for the gateway first")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
