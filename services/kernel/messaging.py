"""NATS JetStream: connection that survives outages, idempotent stream declarations,
durable pull consumers with explicit acks, retries with backoff and a dead-letter subject."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

log = logging.getLogger(__name__)

DUPLICATE_WINDOW_SECONDS = 600.0  # Nats-Msg-Id dedupe window for outbox retries


@dataclass(frozen=True)
class Stream:
    name: str
    subjects: tuple[str, ...]
    max_age_seconds: float = 7 * 24 * 3600


# Where consumers put messages that keep failing, for a person to look at.
DEAD_LETTERS = Stream("DEADLETTER", ("deadletter.>",), max_age_seconds=30 * 24 * 3600)


class Messaging:
    """One NATS connection per process. Connects in the background so a service can start
    (NOT_SERVING) while NATS is down, and reconnects forever."""

    def __init__(self, url: str, client_name: str, streams: Sequence[Stream] = ()) -> None:
        self._url = url
        self._name = client_name
        self._streams = (*streams, DEAD_LETTERS)
        self._client: Client | None = None
        self._ready = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    @property
    def jetstream(self) -> JetStreamContext:
        if self._client is None:
            raise RuntimeError("NATS is not connected yet")
        return self._client.jetstream()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def run(self) -> None:
        """Connects (retrying) and declares streams; returns once connected."""
        while self._client is None:
            client: Client | None = None
            try:
                client = await nats.connect(
                    self._url,
                    name=self._name,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    connect_timeout=2,
                    error_cb=_log_error,
                )
                await declare_streams(client.jetstream(), self._streams)
                self._client = client
            except Exception as exc:
                log.warning("NATS not ready (%s); retrying", exc)
                if client is not None:  # connected, but the streams failed: do not leak it
                    with contextlib.suppress(Exception):
                        await client.close()
                await asyncio.sleep(1)
        self._ready.set()

    async def close(self) -> None:
        # Not drain(): it waits on the pull subscriptions' pending fetches. Every publish
        # here is a JetStream request already acknowledged, so nothing is left to flush.
        if self._client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client.close(), 5)


async def _log_error(error: Exception) -> None:
    log.warning("NATS: %s", error)


async def declare_streams(js: JetStreamContext, streams: Sequence[Stream]) -> None:
    for stream in streams:
        config = StreamConfig(
            name=stream.name,
            subjects=list(stream.subjects),
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
            max_age=stream.max_age_seconds,
        )
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)


MessageHandler = Callable[[Msg], Awaitable[None]]
BatchHandler = Callable[[Sequence[Msg]], Awaitable[None]]


class PoisonMessage(Exception):
    """Raised by a handler for a message that can never succeed (malformed): it goes to the
    dead-letter subject at once instead of being retried."""


@dataclass(frozen=True)
class Consumer:
    stream: str
    durable: str
    subject: str
    handler: MessageHandler
    max_deliver: int = 8
    # Redelivery delays, in seconds, after each failed attempt.
    backoff: tuple[float, ...] = (1, 2, 5, 10, 30, 60, 120)
    batch: int = 64
    # Seconds before an unacknowledged message is delivered again (after a crash). Handlers
    # that take longer are kept alive by progress reports.
    ack_wait: float = 15.0
    # Handles every message of a fetched batch at once (one transaction for all of them),
    # acked together after it returns. If it fails, the batch is handled message by message.
    batch_handler: BatchHandler | None = None
    # With a batch handler: how long to keep gathering messages that trickle in before
    # handling what has arrived (a little latency for far fewer, larger transactions).
    gather_seconds: float = 0.0
    # Batches handled at once by this process (their handlers overlap their database waits);
    # the handler must be safe to run concurrently.
    concurrency: int = 1

    @property
    def dead_letter_subject(self) -> str:
        return f"deadletter.{self.stream.lower()}.{self.durable}"


async def run_consumer(messaging: Messaging, consumer: Consumer) -> None:
    """Fetches and handles messages forever. A message is acked only after its handler
    returns (handlers commit their side effects and must be idempotent: delivery is
    at-least-once). A message that keeps failing goes to the dead-letter subject. NATS
    errors outside the handler (a lost connection, a failed ack) restart the loop: an
    unacked message is simply redelivered."""
    await messaging.wait_ready()

    async def loop() -> None:
        while True:
            try:
                await _consume(messaging, consumer)
            except Exception:
                log.exception("consumer %s failed; restarting", consumer.durable)
                await asyncio.sleep(1)

    await asyncio.gather(*(loop() for _ in range(consumer.concurrency)))


async def _consume(messaging: Messaging, consumer: Consumer) -> None:
    js = messaging.jetstream
    config = ConsumerConfig(
        durable_name=consumer.durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=consumer.ack_wait,
        max_deliver=consumer.max_deliver + 1,
        filter_subject=consumer.subject,
    )
    subscription = await js.pull_subscribe(
        consumer.subject, durable=consumer.durable, stream=consumer.stream, config=config
    )
    while True:
        try:
            messages = await subscription.fetch(consumer.batch, timeout=1)
            if consumer.batch_handler is not None:
                messages += await _gather(subscription, consumer, len(messages))
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        except (NotFoundError, nats.errors.Error) as exc:
            log.warning("consumer %s: fetch failed (%s)", consumer.durable, exc)
            await asyncio.sleep(1)
            continue
        if consumer.batch_handler is not None and len(messages) > 1:
            try:
                async with _in_progress(messages, consumer.ack_wait):
                    await consumer.batch_handler(messages)
            except Exception as error:
                log.info("consumer %s: batch failed (%s); one by one", consumer.durable, error)
            else:
                for message in messages:
                    await message.ack()
                continue
        for message in messages:
            await _handle(js, consumer, message)


async def _gather(
    subscription: JetStreamContext.PullSubscription, consumer: Consumer, fetched: int
) -> list[Msg]:
    """More messages for a batch, for up to consumer.gather_seconds or until it is full."""
    more: list[Msg] = []
    deadline = time.monotonic() + consumer.gather_seconds
    while fetched + len(more) < consumer.batch and (left := deadline - time.monotonic()) > 0.01:
        try:
            more += await subscription.fetch(consumer.batch - fetched - len(more), timeout=left)
        except (TimeoutError, nats.errors.TimeoutError):
            break
    return more


@contextlib.asynccontextmanager
async def _in_progress(messages: Sequence[Msg], ack_wait: float) -> AsyncIterator[None]:
    """Tells JetStream the messages are still being worked on, a few times per ack_wait, so a
    long handler is not raced by a redelivery (and a crashed one is redelivered soon)."""

    async def report() -> None:
        while True:
            await asyncio.sleep(ack_wait / 3)
            for message in messages:
                with contextlib.suppress(nats.errors.Error):
                    await message.in_progress()

    reporter = asyncio.create_task(report())
    try:
        yield
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter


async def _handle(js: JetStreamContext, consumer: Consumer, message: Msg) -> None:
    attempt = message.metadata.num_delivered
    try:
        async with _in_progress([message], consumer.ack_wait):
            await consumer.handler(message)
    except Exception as error:
        if attempt >= consumer.max_deliver or isinstance(error, PoisonMessage):
            log.exception("consumer %s: giving up on a message", consumer.durable)
            await js.publish(consumer.dead_letter_subject, message.data, headers=message.headers)
            await message.term()
            return
        delay = consumer.backoff[min(attempt - 1, len(consumer.backoff) - 1)]
        log.warning(
            "consumer %s: attempt %d failed, retry in %ss", consumer.durable, attempt, delay
        )
        await message.nak(delay=delay)
        return
    await message.ack()
