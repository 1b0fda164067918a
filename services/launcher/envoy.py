"""Renders gateway/envoy.yaml.tmpl: the static skeleton lives in the template, the parts that
depend on the discovered services (routes, clusters, transcoded service names) are built here.

The same renderer serves `make run`, the tests and Kubernetes (`render-envoy`), so the gateway
the tests exercise is the gateway that ships.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = REPO_ROOT / "gateway" / "envoy.yaml.tmpl"
DASHBOARD_PATH = REPO_ROOT / "gateway" / "dashboard" / "index.html"
DESCRIPTOR_PATH = REPO_ROOT / "gen" / "descriptor.binpb"

MIB = 1024 * 1024
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# Header naming the service a health or reflection call is for: every service serves those
# same gRPC services, so the path alone cannot pick the upstream.
SERVICE_HEADER = "energymesh-service"
SHARED_GRPC_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
)
# google.rpc.Code for the HTTP statuses Envoy answers itself, so its own errors look like the
# services' errors (which the transcoder converts from grpc-status).
LOCAL_REPLY_CODES = {
    400: 3,  # INVALID_ARGUMENT: unknown query parameter, malformed JSON
    401: 16,  # UNAUTHENTICATED
    403: 7,  # PERMISSION_DENIED
    404: 5,  # NOT_FOUND: unknown path
    405: 12,  # UNIMPLEMENTED
    408: 4,  # DEADLINE_EXCEEDED
    413: 8,  # RESOURCE_EXHAUSTED: body above max_request_bytes
    429: 8,  # RESOURCE_EXHAUSTED
    431: 8,  # RESOURCE_EXHAUSTED: headers too large
    500: 13,  # INTERNAL
    501: 12,  # UNIMPLEMENTED
    502: 14,  # UNAVAILABLE
    503: 14,  # UNAVAILABLE: upstream down
    504: 4,  # DEADLINE_EXCEEDED
}
UNKNOWN_CODE = 2


@dataclass(frozen=True)
class Upstream:
    """One service as the gateway sees it."""

    name: str
    grpc_services: tuple[str, ...]
    # 127.0.0.1 locally; the Kubernetes service DNS name in a cluster.
    host: str
    port: int
    # Methods the gateway refuses (404): callable only from inside the mesh.
    internal_methods: tuple[str, ...] = ()


@dataclass(frozen=True)
class GatewayConfig:
    upstreams: tuple[Upstream, ...]
    descriptor_path: Path = DESCRIPTOR_PATH
    listen_address: str = "127.0.0.1"
    listen_port: int = 8080
    admin_address: str = "127.0.0.1"
    admin_port: int = 9901
    # Origins allowed by CORS; None means the gateway's own origin (it serves the dashboard).
    cors_origins: tuple[str, ...] | None = None
    # grpcio's default receive limit, so REST and gRPC accept the same messages.
    max_request_bytes: int = 4 * MIB
    max_response_bytes: int = 4 * MIB
    connection_buffer_bytes: int = 1 * MIB
    dashboard_path: Path = DASHBOARD_PATH
    # Service that answers health and reflection calls without an energymesh-service header;
    # None means the first upstream (auth, by start order).
    default_upstream: str | None = None

    def origins(self) -> tuple[str, ...]:
        if self.cors_origins is not None:
            return self.cors_origins
        return (f"http://127.0.0.1:{self.listen_port}", f"http://localhost:{self.listen_port}")


def render(config: GatewayConfig) -> str:
    if not config.upstreams:
        raise ValueError("the gateway needs at least one upstream service")
    default = config.default_upstream or config.upstreams[0].name
    if default not in {upstream.name for upstream in config.upstreams}:
        raise ValueError(f"default upstream {default!r} is not one of the upstreams")
    dashboard = config.dashboard_path.read_text(encoding="utf-8")
    template = Template(TEMPLATE_PATH.read_text(encoding="utf-8"))
    return template.substitute(
        admin_address=_scalar(config.admin_address),
        admin_port=config.admin_port,
        listen_address=_scalar(config.listen_address),
        listen_port=config.listen_port,
        connection_buffer_bytes=config.connection_buffer_bytes,
        descriptor_path=_scalar(str(config.descriptor_path.absolute())),
        max_request_bytes=config.max_request_bytes,
        max_response_bytes=config.max_response_bytes,
        # Headroom over the page itself; Envoy refuses bodies above this limit at load time.
        max_direct_response_bytes=len(dashboard.encode()) + 4096,
        dashboard_html=_scalar(dashboard),
        transcoded_services=_yaml(
            [name for upstream in config.upstreams for name in upstream.grpc_services], 14
        ),
        cors_origins=_yaml([{"exact": origin} for origin in config.origins()], 18),
        local_reply_mappers=_yaml(_local_reply_mappers(), 12),
        service_routes=_yaml(_routes(config.upstreams, default), 14),
        clusters=_yaml([_cluster(upstream, config) for upstream in config.upstreams], 2),
    )


def _routes(upstreams: Sequence[Upstream], default: str) -> list[dict[str, object]]:
    # Internal methods first: answered 404 here, never forwarded.
    routes: list[dict[str, object]] = [
        {"match": {"path": method}, "direct_response": {"status": 404}}
        for upstream in upstreams
        for method in upstream.internal_methods
    ]
    routes += [
        _route({"prefix": f"/{grpc_service}/"}, upstream.name)
        for upstream in upstreams
        for grpc_service in upstream.grpc_services
    ]
    for shared in SHARED_GRPC_SERVICES:
        prefix = f"/{shared}/"
        for upstream in upstreams:
            header = {"name": SERVICE_HEADER, "string_match": {"exact": upstream.name}}
            routes.append(_route({"prefix": prefix, "headers": [header]}, upstream.name))
        # No header: the default service. An unknown name falls through to the final 404.
        absent = {"name": SERVICE_HEADER, "present_match": True, "invert_match": True}
        routes.append(_route({"prefix": prefix, "headers": [absent]}, default))
    return routes


def _route(match: dict[str, object], cluster: str) -> dict[str, object]:
    return {
        "match": match,
        # timeout 0s: the default 15 s route timeout would cut server streams.
        "route": {"cluster": cluster, "timeout": "0s"},
        # The body size limit is for REST bodies; a gRPC client stream may exceed it in total.
        "typed_per_filter_config": {
            "envoy.filters.http.body_size_limit": {
                "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                "disabled": True,
            }
        },
    }


def _cluster(upstream: Upstream, config: GatewayConfig) -> dict[str, object]:
    address = {"socket_address": {"address": upstream.host, "port_value": upstream.port}}
    return {
        "name": upstream.name,
        # An IP needs no resolver; a DNS name (Kubernetes) is re-resolved as pods come and go.
        "type": "STATIC" if _is_ip(upstream.host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "per_connection_buffer_limit_bytes": config.connection_buffer_bytes,
        "load_assignment": {
            "cluster_name": upstream.name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
        # gRPC needs HTTP/2 to the upstream whatever the client spoke.
        "typed_extension_protocol_options": {
            HTTP_PROTOCOL_OPTIONS: {
                "@type": f"type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}",
                "explicit_http_config": {
                    "http2_protocol_options": {"max_concurrent_streams": 100000}
                },
            }
        },
        # Envoy's defaults (1024 requests) would cap concurrent streams, e.g. subscriptions.
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": 100000,
                    "max_pending_requests": 100000,
                    "max_requests": 100000,
                }
            ]
        },
    }


def _local_reply_mappers() -> list[dict[str, object]]:
    # gRPC and gRPC-Web callers keep Envoy's grpc-status answer; HTTP callers get JSON. A REST
    # call the transcoder already rewrote to gRPC is recognised by its saved original path.
    http_caller = {
        "or_filter": {
            "filters": [
                {
                    "header_filter": {
                        "header": {
                            "name": "content-type",
                            "string_match": {"prefix": "application/grpc"},
                            "invert_match": True,
                            # A GET has no content-type; without this it would not match.
                            "treat_missing_header_as_empty": True,
                        }
                    }
                },
                {
                    "header_filter": {
                        "header": {"name": "x-envoy-original-path", "present_match": True}
                    }
                },
            ]
        }
    }

    def mapper(op: str, status: int, code: int) -> dict[str, object]:
        comparison = {
            "op": op,
            "value": {"default_value": status, "runtime_key": f"energymesh.local_reply.{status}"},
        }
        return {
            "filter": {
                "and_filter": {
                    "filters": [{"status_code_filter": {"comparison": comparison}}, http_caller]
                }
            },
            "body_format_override": {
                "json_format": {"code": code, "message": "%LOCAL_REPLY_BODY%", "details": []}
            },
        }

    mappers = [mapper("EQ", status, code) for status, code in LOCAL_REPLY_CODES.items()]
    mappers.append(mapper("GE", 400, UNKNOWN_CODE))
    return mappers


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def _scalar(value: object) -> str:
    # JSON scalars are valid YAML, and JSON quoting makes any string safe to substitute.
    return json.dumps(value, ensure_ascii=False)


def _yaml(value: object, indent: int) -> str:
    """Block-style YAML for the generated fragments, indented to where the template puts them."""
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return pad + "{}"
        lines = []
        for key, item in value.items():
            name = key if _PLAIN_KEY.fullmatch(key) else _scalar(key)
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{name}:\n{_yaml(item, indent + 2)}")
            else:
                lines.append(f"{pad}{name}: {_flow(item)}")
        return "\n".join(lines)
    if isinstance(value, list):
        if not value:
            return pad + "[]"
        lines = []
        for item in value:
            if isinstance(item, dict | list) and item:
                nested = _yaml(item, indent + 2)
                lines.append(f"{pad}- {nested[indent + 2 :]}")
            else:
                lines.append(f"{pad}- {_flow(item)}")
        return "\n".join(lines)
    return pad + _flow(value)


def _flow(value: object) -> str:
    if value == {}:
        return "{}"
    if value == []:
        return "[]"
    return _scalar(value)
