"""Small kernel pieces: pagination tokens, trace context, the permission matrix, errors."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from services.kernel.context import Caller, Role, Trace
from services.kernel.errors import InvalidArgument, ResourceExhausted
from services.kernel.pagination import decode_token, encode_token, page_size
from services.kernel.permissions import ROLE_PERMISSIONS, Permission, has_permission


def test_page_tokens_round_trip_and_are_bound_to_filters() -> None:
    token = encode_token(["2026-01-01T00:00:00+00:00", "id-9"], {"role": "ROLE_ADMIN"})
    assert decode_token(token, {"role": "ROLE_ADMIN"}) == ["2026-01-01T00:00:00+00:00", "id-9"]
    with pytest.raises(InvalidArgument):
        decode_token(token, {"role": "ROLE_VIEWER"})
    with pytest.raises(InvalidArgument):
        decode_token("!!garbage!!")
    assert decode_token("") is None


def test_page_size_defaults_clamps_and_rejects_negatives() -> None:
    assert page_size(0) == 50
    assert page_size(5000) == 1000
    with pytest.raises(InvalidArgument):
        page_size(-1)


def test_trace_context_is_continued_or_started() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    trace = Trace.from_traceparent(parent)
    assert trace.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert trace.span_id != "b7ad6b7169203331"
    for bad in (None, "", "00-xyz-abc-01", "00-" + "0" * 32 + "-b7ad6b7169203331-01"):
        fresh = Trace.from_traceparent(bad)
        assert len(fresh.trace_id) == 32
        assert fresh.trace_id != "0" * 32


def test_roles_are_nested_and_viewers_only_read() -> None:
    admin, manager = ROLE_PERMISSIONS[Role.ADMIN], ROLE_PERMISSIONS[Role.MANAGER]
    operator, viewer = ROLE_PERMISSIONS[Role.OPERATOR], ROLE_PERMISSIONS[Role.VIEWER]
    assert viewer < operator < manager < admin
    assert viewer == {Permission.AUTHENTICATED, Permission.DATA_READ}
    assert Permission.PUBLIC not in admin
    caller = Caller("u", "o", Role.MANAGER, "t", 0)
    assert has_permission(caller, Permission.METERS_MANAGE)
    assert not has_permission(caller, Permission.USERS_MANAGE)


def test_errors_carry_structured_details() -> None:
    status = InvalidArgument([("email", "is required"), ("password", "too short")]).to_status()
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    bad_request = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad_request) for detail in status.details)
    assert [v.field for v in bad_request.field_violations] == ["email", "password"]

    exhausted = ResourceExhausted("slow down", retry_after_seconds=30)
    retry = error_details_pb2.RetryInfo()
    assert any(detail.Unpack(retry) for detail in exhausted.to_status().details)
    assert retry.retry_delay.seconds == 30
    assert exhausted.trailing_metadata() == (("retry-after", "30"),)


def test_client_address_honours_trusted_proxies() -> None:
    from services.kernel.interceptors import client_address

    chain = {"x-forwarded-for": "198.51.100.7, 203.0.113.9, 10.0.0.5"}
    assert client_address(chain, "ipv4:10.0.0.9:5555") == "10.0.0.5"
    assert client_address(chain, "ipv4:10.0.0.9:5555", trusted_hops=1) == "203.0.113.9"
    assert client_address(chain, "ipv4:10.0.0.9:5555", trusted_hops=9) == "198.51.100.7"
    assert client_address({}, "ipv4:10.0.0.9:5555") == "10.0.0.9"
    assert client_address({}, "ipv6:[::1]:5555") == "::1"


def test_nul_characters_are_field_violations() -> None:
    from google.protobuf import struct_pb2

    from energymesh.auth.v1 import auth_pb2
    from services.kernel.interceptors import reject_nul_characters

    reject_nul_characters(auth_pb2.RegisterRequest(email="a@example.com", password="fine"))
    with pytest.raises(InvalidArgument) as raised:
        reject_nul_characters(
            auth_pb2.CreateUserRequest(user=auth_pb2.User(display_name="a\x00b"), password="p\x00")
        )
    assert {field for field, _ in raised.value.violations} == {"user.display_name", "password"}
    event = auth_pb2.AuditEvent(details=struct_pb2.Struct())
    event.details.update({"k": "v"})
    reject_nul_characters(event)
