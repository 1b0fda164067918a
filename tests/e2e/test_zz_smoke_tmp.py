from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import httpx

from tests.e2e.analytics_steps import write_readings
from tests.e2e.device_steps import create_meter, create_site
from tests.e2e.helpers import eventually, register

Q = 900_000


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


async def test_smoke(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    site = (await create_site(http, admin, timeZone="Europe/Berlin"))["siteId"]
    m1 = (await create_meter(http, admin, site, unit="kWh"))["meterId"]
    m2 = (await create_meter(http, admin, site, unit="kWh"))["meterId"]
    start = ms("2026-09-28T00:00:00+02:00")
    n = 5 * 7 * 96
    times = [start + i * Q for i in range(n + 1)]
    v1 = [0.0]
    for i in range(1, n + 1):
        local = datetime.fromtimestamp(times[i] / 1000, UTC)
        step = 1.0 + (0.5 if 8 <= local.hour < 18 else 0.0)
        if i == n - 200:
            step += 40
        v1.append(v1[-1] + step)
    v2 = [i * 0.5 for i in range(n + 1)]
    await write_readings(http, admin, m1, times, v1)
    await write_readings(http, admin, m2, times, v2)
    end = times[-1]

    async def done() -> bool:
        r = await http.get(
            f"/v1/sites/{site}/consumption",
            params={"startTime": "2026-09-28T00:00:00+02:00", "endTime": "2026-11-02T00:00:00+01:00", "granularity": "GRANULARITY_DAY"},
            headers=admin.headers,
        )
        assert r.status_code == 200, r.text
        pts = r.json().get("series", [{}])[0].get("points", []) if r.json().get("series") else []
        return len(pts) == 35 and math.isclose(sum(p["value"] for p in pts), v1[-1] + v2[-1], rel_tol=1e-9)

    await eventually(done, wait_seconds=120)
    for path, params in [
        (f"/v1/sites/{site}/consumption", {"startTime": "2026-10-24T22:00:00Z", "endTime": "2026-10-25T23:00:00Z", "granularity": "GRANULARITY_HOUR"}),
        ("/v1/consumption", {"startTime": "2026-09-28T00:00:00Z", "endTime": "2026-11-03T00:00:00Z", "granularity": "GRANULARITY_WEEK"}),
        ("/v1/consumption", {"startTime": "2026-09-28T00:00:00Z", "endTime": "2026-11-03T00:00:00Z", "granularity": "GRANULARITY_MONTH", "timeZone": "Europe/Berlin"}),
        (f"/v1/sites/{site}/summary", {"startTime": "2026-10-01T00:00:00+02:00", "endTime": "2026-11-01T00:00:00+01:00"}),
        ("/v1/consumption:top", {"startTime": "2026-10-01T00:00:00Z", "endTime": "2026-11-01T00:00:00Z"}),
        (f"/v1/meters/{m1}/forecast", {"horizonHours": 3}),
        ("/v1/anomalies", {}),
        ("/v1/consumption:export", {"siteId": site, "startTime": "2026-10-24T22:00:00Z", "endTime": "2026-10-26T23:00:00Z", "granularity": "GRANULARITY_DAY"}),
    ]:
        r = await http.get(path, params=params, headers=admin.headers)
        text = r.text if "export" in path else json.dumps(r.json(), indent=1)
        print("\n====", path, r.status_code, r.headers.get("content-type"), "\n", text[:3000])
