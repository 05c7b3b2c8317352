"""The app-scoped event bus: what happened, published once, consumed by whoever listens.

The server makes one `Bus` per app (`create_app`) and hands it to what publishes and what
consumes; nothing is registered in a module global, so two apps in one process (tests) never
see each other's events.

Publishers: the batch runner (`batch.completed|failed|expired|cancelled`), the limiter
(`usage.limit.reached`), usage accounting (`usage.recorded`, internal: the rows of requests
just recorded), later fine-tuning workers (`fine_tuning.job.*`).
Consumers: webhooks (turns the public events into persisted deliveries), the limiter (counts
`usage.recorded` rows against monthly quotas), metrics (`llmp_events_total`), later the TUI's
status feed.

Handlers run synchronously in the publisher's thread, in subscription order; a handler that
raises is logged and never breaks the publisher or the other handlers. A handler that must
run on an event loop hops there itself (`loop.call_soon_threadsafe`).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from llmp.ids import new_id

log = logging.getLogger(__name__)

# public events (webhook subscriptions name them)
BATCH_COMPLETED = "batch.completed"
BATCH_FAILED = "batch.failed"
BATCH_EXPIRED = "batch.expired"
BATCH_CANCELLED = "batch.cancelled"
FINE_TUNING_JOB_COMPLETED = "fine_tuning.job.completed"
FINE_TUNING_JOB_FAILED = "fine_tuning.job.failed"
FINE_TUNING_JOB_SUCCEEDED = "fine_tuning.job.succeeded"
FINE_TUNING_JOB_CANCELLED = "fine_tuning.job.cancelled"
USAGE_LIMIT_REACHED = "usage.limit.reached"
# internal events (never sent to webhooks)
USAGE_RECORDED = "usage.recorded"  # data: {"rows": [usage rows]}, before they are stored


@dataclass(frozen=True)
class Event:
    type: str
    data: dict[str, Any]
    #: the API key the event belongs to (a batch's owner, the key over its quota), if any
    key_id: str | None = None
    id: str = field(default_factory=lambda: new_id("evt"))
    created_at: int = field(default_factory=lambda: int(time.time()))


Handler = Callable[[Event], None]


class Bus:
    """Publish/subscribe within one app. Thread-safe: publish from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: tuple[tuple[frozenset[str] | None, Handler], ...] = ()

    def subscribe(self, handler: Handler, *, types: Iterable[str] | None = None
                  ) -> Callable[[], None]:
        """Call `handler(event)` for every event published from now on (only those of
        `types` when given); returns a function that unsubscribes it."""
        entry = (frozenset(types) if types is not None else None, handler)
        with self._lock:
            self._subs = (*self._subs, entry)

        def unsubscribe() -> None:
            with self._lock:
                self._subs = tuple(s for s in self._subs if s is not entry)

        return unsubscribe

    def publish(self, type: str, data: dict[str, Any], *, key_id: str | None = None) -> Event:
        """Hand an event to every handler subscribed to its type; returns it."""
        event = Event(type, data, key_id)
        for types, handler in self._subs:
            if types is None or type in types:
                try:
                    handler(event)
                except Exception:
                    log.exception("event handler %r failed on %s", handler, type)
        return event
