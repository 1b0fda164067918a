"""`energymesh` / `python -m services.launcher`: run the mesh in the foreground, or print the
Envoy config for given upstreams (Kubernetes, debugging)."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from services.launcher.discovery import discover_services
from services.launcher.envoy import DESCRIPTOR_PATH, GatewayConfig, Upstream, render
from services.launcher.mesh import Mesh, MeshConfig, MeshError


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="energymesh", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="start the whole mesh on http://127.0.0.1:8080 (make run)")
    render_parser = commands.add_parser("render-envoy", help="print the rendered Envoy config")
    render_parser.add_argument("--listen-address", default="127.0.0.1")
    render_parser.add_argument("--port", type=int, default=8080)
    render_parser.add_argument("--admin-address", default="127.0.0.1")
    render_parser.add_argument("--admin-port", type=int, default=9901)
    render_parser.add_argument("--descriptor", type=Path, default=DESCRIPTOR_PATH)
    render_parser.add_argument(
        "--upstream-host",
        default="127.0.0.1",
        help="host of every service, {name} replaced by its name, e.g. '{name}.energymesh.svc'",
    )
    render_parser.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="NAME=HOST:PORT",
        help="address of one service (default: --upstream-host and its default port)",
    )
    render_parser.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help="allowed browser origin, repeatable (default: the gateway's own)",
    )
    args = parser.parse_args(argv)
    if args.command == "run":
        sys.exit(run())
    print(render_envoy(args), end="")


def run() -> int:
    mesh = Mesh(MeshConfig.for_development())
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            print("energymesh: already stopping, please wait", file=sys.stderr, flush=True)
            return
        stopping = True
        print("energymesh: stopping", file=sys.stderr, flush=True)
        raise KeyboardInterrupt

    # Children run in their own sessions, so Ctrl-C reaches only us; SIGTERM is the same request.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        mesh.start()
        print(banner(mesh), flush=True)
        while not (exited := mesh.exited()):
            time.sleep(0.5)
        for child in exited:
            print(
                f"energymesh: {child.name} exited with code {child.returncode}; stopping\n"
                f"{child.tail()}",
                file=sys.stderr,
            )
        return 1
    except KeyboardInterrupt:
        return 0
    except MeshError as error:
        print(f"energymesh: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        stopping = True
        mesh.stop()


def banner(mesh: Mesh) -> str:
    rows = [
        ("REST, gRPC, gRPC-Web", mesh.gateway_url),
        ("Dashboard", f"{mesh.gateway_url}/dashboard"),
        ("Envoy admin", mesh.admin_url),
        *(
            (f"{info.name} (direct gRPC)", mesh.service_address(info.name))
            for info in mesh.services
        ),
        ("PostgreSQL", mesh.database_url),
        ("NATS", mesh.nats_url),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [f"  {label.ljust(width)}  {value}" for label, value in rows]
    return "\nEnergyMesh is ready.\n" + "\n".join(lines) + "\nPress Ctrl-C to stop.\n"


def render_envoy(args: argparse.Namespace) -> str:
    overrides: dict[str, tuple[str, int]] = {}
    for item in args.upstream:
        name, _, address = item.partition("=")
        host, _, port = address.rpartition(":")
        if not (name and host and port.isdigit()):
            raise SystemExit(f"--upstream wants NAME=HOST:PORT, got {item!r}")
        overrides[name] = (host, int(port))
    services = discover_services()
    unknown = set(overrides) - {info.name for info in services}
    if unknown:
        raise SystemExit(f"--upstream names unknown services: {sorted(unknown)}")
    addresses = {
        info.name: overrides.get(
            info.name, (args.upstream_host.format(name=info.name), info.default_port)
        )
        for info in services
    }
    upstreams = tuple(
        Upstream(
            info.name,
            info.grpc_services,
            host=addresses[info.name][0],
            port=addresses[info.name][1],
            internal_methods=info.internal_methods,
        )
        for info in services
    )
    return render(
        GatewayConfig(
            upstreams=upstreams,
            descriptor_path=args.descriptor,
            listen_address=args.listen_address,
            listen_port=args.port,
            admin_address=args.admin_address,
            admin_port=args.admin_port,
            cors_origins=tuple(args.cors_origin) if args.cors_origin else None,
        )
    )
