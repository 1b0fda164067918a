"""One server interceptor for every service: tracing, access control, error mapping, logging.

It wraps each RPC's behaviour so that, around the handler:
- the W3C trace context is continued (or started) and put in logs and outgoing events;
- the method's declared permission is enforced: PUBLIC needs nothing, anything else needs a
  valid access token, whose caller is then exposed to the handler (`caller()`);
- DomainErrors become google.rpc.Status with details; anything else becomes INTERNAL with
  a trace id, never a stack trace;
- one structured log line records method, status code and duration.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_status import rpc_status

from services.kernel.context import (
    Caller,
    Trace,
    current_caller,
    current_client_address,
    current_method,
    current_trace,
)
from services.kernel.database import database_error
from services.kernel.errors import DomainError, InvalidArgument, Unauthenticated, internal_status
from services.kernel.permissions import Permission, require
from services.kernel.tokens import TokenVerifier

log = logging.getLogger("energymesh.rpc")

# Infrastructure every service serves to anyone: health checks and reflection.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

# A service-specific look at a verified caller (auth re-reads the user from its database so
# that deleted or disabled users and changed roles take effect at once). Returns the caller
# to use, or raises Unauthenticated.
CallerCheck = Callable[[Caller], Awaitable[Caller]]

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler


def caller() -> Caller:
    """The authenticated caller of the current RPC."""
    found = current_caller.get()
    if found is None:
        raise Unauthenticated("authentication required")
    return found


def client_address(metadata: Mapping[str, str], peer: str, trusted_hops: int = 0) -> str:
    """The client's address. Envoy appends its peer to x-forwarded-for, so the last entry is
    trustworthy; with `trusted_hops` proxies in front of Envoy (an ingress, a load balancer),
    each appending its own peer, the client is that many entries further left."""
    entries = [entry.strip() for entry in metadata.get("x-forwarded-for", "").split(",")]
    if entries[-1]:
        return entries[max(0, len(entries) - 1 - trusted_hops)]
    # peer looks like "ipv4:127.0.0.1:5555" or "ipv6:[::1]:5555"
    _, _, address = peer.partition(":")
    return address.rsplit(":", 1)[0].strip("[]")


class KernelInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        access: Mapping[str, Permission],
        verifier: TokenVerifier,
        caller_check: CallerCheck | None = None,
        trusted_proxy_hops: int = 0,
    ) -> None:
        self._access = access
        self._verifier = verifier
        self._caller_check = caller_check
        self._trusted_hops = trusted_proxy_hops

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        return _wrap_handler(handler, lambda context: self._scope(method, context))

    @contextlib.asynccontextmanager
    async def _scope(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
        trace = Trace.from_traceparent(metadata.get("traceparent"))
        current_trace.set(trace)
        current_method.set(method)
        current_client_address.set(client_address(metadata, context.peer(), self._trusted_hops))
        current_caller.set(None)
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            await self._authorize(method, metadata)
            yield
        except DomainError as error:
            code = error.code
            await _abort(context, error)
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except BaseException as error:
            if not isinstance(error, Exception):  # cancellation, shutdown: not ours to map
                code = grpc.StatusCode.CANCELLED
                raise
            known = database_error(error)
            if known is not None:
                code = known.code
                log.warning("%s: %s (%s)", method, known.message, error.__class__.__name__)
                await _abort(context, known)
            code = grpc.StatusCode.INTERNAL
            log.exception("unhandled error in %s", method)
            status = rpc_status.to_status(internal_status(trace.trace_id))
            await context.abort(status.code, status.details, status.trailing_metadata)
        finally:
            log.info(
                "rpc finished",
                extra={
                    "grpc_code": code.name,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "client_address": current_client_address.get(),
                },
            )

    async def _authorize(self, method: str, metadata: Mapping[str, str]) -> None:
        permission = self._access.get(method)
        if permission is None:  # the server refuses to start with an undeclared method
            raise Unauthenticated("method has no access rule")
        if permission is Permission.PUBLIC:
            return
        scheme, _, token = metadata.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("a bearer access token is required")
        verified = await self._verifier.verify(token.strip())
        if self._caller_check is not None:
            verified = await self._caller_check(verified)
        current_caller.set(verified)
        require(verified, permission)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: DomainError) -> None:
    status = rpc_status.to_status(error.to_status())
    await context.abort(
        status.code, status.details, (*status.trailing_metadata, *error.trailing_metadata())
    )


def reject_nul_characters(request: Message) -> None:
    """PostgreSQL text cannot hold NUL; refuse it up front as a field violation instead of
    failing deep in a query."""
    violations = list(_nul_fields(request, ""))
    if violations:
        raise InvalidArgument([(field, "must not contain NUL characters") for field in violations])


def _nul_fields(message: Message, prefix: str) -> Iterator[str]:
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_STRING:
            if any("\x00" in text for text in (value if repeated else [value])):
                yield path
        elif field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                if any("\x00" in f"{key}{item}" for key, item in value.items()):
                    yield path
            elif repeated:
                for index, item in enumerate(value):
                    yield from _nul_fields(item, f"{path}[{index}].")
            else:
                yield from _nul_fields(value, f"{path}.")


Scope = Callable[[grpc.aio.ServicerContext[Any, Any]], contextlib.AbstractAsyncContextManager[Any]]


def _wrap_handler(handler: Handler, scope: Scope) -> Handler:
    """Runs each kind of RPC behaviour inside `scope`."""
    # grpc's stubs type behaviours for the sync API; under grpc.aio they are coroutines.
    behaviours: Any = handler
    if handler.unary_unary is not None:
        unary_unary = behaviours.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with scope(context):
                reject_nul_characters(request)
                return await unary_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary is not None:
        stream_unary = behaviours.stream_unary

        async def client_stream(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with scope(context):
                return await stream_unary(requests, context)

        return grpc.stream_unary_rpc_method_handler(
            client_stream, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream is not None:
        unary_stream = behaviours.unary_stream

        async def server_stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async with scope(context):
                async for response in unary_stream(request, context):
                    yield response

        return grpc.unary_stream_rpc_method_handler(
            server_stream, handler.request_deserializer, handler.response_serializer
        )
    stream_stream = behaviours.stream_stream

    async def bidi_stream(
        requests: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async with scope(context):
            async for response in stream_stream(requests, context):
                yield response

    return grpc.stream_stream_rpc_method_handler(
        bidi_stream, handler.request_deserializer, handler.response_serializer
    )
