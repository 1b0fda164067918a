"""The devices service's pure rules: units per commodity, connectivity, durations, credentials,
CSV parsing and the readings-committed payload."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.devices.credentials import matches, new_credential, parse_credential
from services.devices.events import readings_committed_from_json
from services.devices.importer import parse_csv
from services.devices.validation import (
    Commodity,
    Connectivity,
    MeterInput,
    RegisterType,
    check_meter,
    connectivity_of,
    parse_duration,
    units_for,
)
from services.kernel.errors import InvalidArgument, Violations

NOW = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)


def test_units_suit_commodity_and_register_type() -> None:
    assert "kWh" in units_for(Commodity.ELECTRICITY, RegisterType.CUMULATIVE)
    assert "m3" not in units_for(Commodity.ELECTRICITY, RegisterType.CUMULATIVE)
    assert units_for(Commodity.WATER, RegisterType.INSTANTANEOUS) == ["m3/h", "L/h", "L/min"]
    assert "kW" in units_for(Commodity.HEAT, RegisterType.INSTANTANEOUS)
    assert "kWh" not in units_for(Commodity.ELECTRICITY, RegisterType.INSTANTANEOUS)


def meter(**fields: object) -> MeterInput:
    base: dict[str, object] = {
        "site_id": "s",
        "serial_number": "SN-1",
        "commodity": Commodity.GAS,
        "unit": "m3",
        "register_type": RegisterType.CUMULATIVE,
    }
    return MeterInput(**{**base, **fields}).with_defaults()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"unit": "L"}, "unit"),
        ({"multiplier": -1.0}, "multiplier"),
        ({"multiplier": float("nan")}, "multiplier"),
        ({"rollover_value": 0.0}, "rollover_value"),
        ({"register_type": RegisterType.INTERVAL, "rollover_value": 10.0}, "rollover_value"),
        ({"expected_interval_seconds": 0}, "expected_interval_seconds"),
        ({"serial_number": "a b"}, "serial_number"),
        ({"labels": {"9lives": "x"}}, "labels[9lives]"),
    ],
)
def test_meter_rules(fields: dict[str, object], field: str) -> None:
    violations = Violations()
    check_meter(violations, "", meter(**fields))
    assert [name for name, _ in violations.items] == [field]


def test_a_valid_meter_has_defaults() -> None:
    violations = Violations()
    valid = meter()
    check_meter(violations, "", valid)
    assert violations.items == []
    assert (valid.multiplier, valid.expected_interval_seconds) == (1.0, 900)


def test_connectivity_is_two_expected_intervals() -> None:
    assert connectivity_of(None, 900, NOW) is Connectivity.OFFLINE
    assert connectivity_of(NOW - timedelta(seconds=1800), 900, NOW) is Connectivity.ONLINE
    assert connectivity_of(NOW - timedelta(seconds=1801), 900, NOW) is Connectivity.OFFLINE
    assert connectivity_of(NOW + timedelta(seconds=5), 1, NOW) is Connectivity.ONLINE


def test_durations() -> None:
    assert [parse_duration(text) for text in ("900", "900s", "15m", "1h", "1d")] == [
        900,
        900,
        900,
        3600,
        86400,
    ]
    assert parse_duration("soon") is None
    assert parse_duration("-5") is None


def test_credentials_are_hashed_and_found_by_prefix() -> None:
    credential = new_credential("emt")
    assert credential.secret.startswith(credential.prefix + "_")
    assert credential.hash != credential.secret
    assert parse_credential(credential.secret) == ("emt", credential.prefix)
    assert matches(credential.secret, credential.hash)
    assert not matches(credential.secret + "x", credential.hash)
    for bad in ("", "emt", "emx_0123456789ab_secret", "emt_short_secret", "emt_0123456789ab_"):
        assert parse_credential(bad) is None


def test_csv_rows_keep_their_own_errors() -> None:
    rows = parse_csv(
        b"\xef\xbb\xbfSerial Number,commodity,multiplier,labels,expected_interval\n"
        b"A,Electricity,2,floor=1;zone=b,15m\n"
        b"\n"
        b"B,COMMODITY_GAS,x,nolabel,\n",
        max_bytes=10_000,
        max_rows=10,
    )
    assert [row.line for row in rows] == [2, 4]
    first, second = rows
    assert first.values.commodity is Commodity.ELECTRICITY
    assert first.values.labels == {"floor": "1", "zone": "b"}
    assert first.values.expected_interval_seconds == 900
    assert first.provided == {
        "serial_number",
        "commodity",
        "multiplier",
        "labels",
        "expected_interval_seconds",
    }
    assert second.values.commodity is Commodity.GAS
    assert {name for name, _ in second.errors} == {"multiplier", "labels"}


def test_csv_documents_are_checked_as_a_whole() -> None:
    with pytest.raises(InvalidArgument):
        parse_csv(b"serial_number\n" + b"A\n" * 11, max_bytes=10_000, max_rows=10)
    with pytest.raises(InvalidArgument):
        parse_csv(b"serial_number\n" + b"A" * 100, max_bytes=50, max_rows=10)


def test_readings_committed_payload() -> None:
    event = readings_committed_from_json(
        b'{"organizationId":"o","meterId":"m","firstTime":"2026-01-01T00:00:00Z",'
        b'"lastTime":"2026-01-01T00:15:00.123456789Z","count":4,"batchIds":["b"]}'
    )
    assert event.last_time == datetime(2026, 1, 1, 0, 15, 0, 123456, tzinfo=UTC)
    for bad in (b"[]", b"{", b'{"organizationId":"o","meterId":"m"}', b'{"lastTime":"x"}'):
        with pytest.raises(ValueError, match=r"."):
            readings_committed_from_json(bad)
