"""Expected infrastructure faults — the store or Redis restarting — told apart from bugs.

A planned restart of PostgreSQL or Redis is not a programming error: whoever meets it logs
one warning naming the component and what it will do, counts it in /metrics, and tries
again; /healthz shows it while it lasts. Tracebacks stay for the unexpected.

    component = fault_component(exc)      # "store", "redis" or None (a bug: log the traceback)
    if component:
        FAULTS.seen(component, "outbox.claim", exc, retry="next poll")

One warning per outage per place, not per attempt; the first success afterwards logs how
long it lasted (`FAULTS.cleared`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Literal

from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from core import metrics

log = logging.getLogger("scrm.faults")

Component = Literal["store", "redis"]

# asyncpg's own errors when a connection is cut or the server is starting or shutting down
# (08xxx connection exceptions, 57P0x operator intervention); SQLAlchemy wraps them.
_PG_UNAVAILABLE = ("08", "57P")


def fault_component(exc: BaseException) -> Component | None:
    """Which piece of our infrastructure `exc` says is unavailable, following its causes; None for bugs."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        component = _component(current)
        if component is not None:
            return component
        current = current.__cause__ or current.__context__
    return None


def _component(exc: BaseException) -> Component | None:
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | BusyLoadingError):
        return "redis"
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeoutError):
        return "store"
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return "store"
        code = str(getattr(exc.orig, "sqlstate", "") or getattr(exc.orig, "pgcode", "") or "")
        return "store" if code.startswith(_PG_UNAVAILABLE) else None
    if type(exc).__module__.startswith("asyncpg"):
        code = str(getattr(exc, "sqlstate", "") or "")
        if code.startswith(_PG_UNAVAILABLE) or type(exc).__name__ == "ConnectionDoesNotExistError":
            return "store"
    if isinstance(exc, OSError):  # a refused or reset connection, raised unwrapped by the driver that met it
        return _raised_in(exc)
    return None


def _raised_in(exc: BaseException) -> Component | None:
    """The component whose client library raised `exc`: asyncpg's connect lets OSError through as it is."""
    trace = exc.__traceback__
    while trace is not None:
        module = str(trace.tb_frame.f_globals.get("__name__", ""))
        if module.startswith(("asyncpg", "sqlalchemy", "aiosqlite")):
            return "store"
        if module.startswith("redis"):
            return "redis"
        trace = trace.tb_next
    return None


@dataclass
class Outage:
    """A component found unavailable, from the first failure until the next success."""

    component: Component
    since: float  # time.time()
    error: str
    places: set[str] = field(default_factory=set)
    failures: int = 0

    def lasted_s(self) -> float:
        return time.time() - self.since


class Faults:
    """This process's view of its infrastructure: which components are down now, since when."""

    def __init__(self) -> None:
        self.outages: dict[Component, Outage] = {}

    def seen(self, component: Component, place: str, exc: BaseException, retry: str) -> Outage:
        """Record a failure at `place`; one warning for each place in an outage."""
        metrics.INFRA_FAULTS.labels(component, place).inc()
        error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        outage = self.outages.get(component)
        if outage is None:
            outage = self.outages[component] = Outage(component, time.time(), error)
            metrics.INFRA_DOWN.labels(component).set(1)
        outage.failures += 1
        if place not in outage.places:
            outage.places.add(place)
            log.warning("fault.%s place=%s retry=%s error=%s", component, place, retry, error)
        return outage

    def cleared(self, component: Component) -> None:
        """A success at `component`: an outage in progress is over."""
        outage = self.outages.pop(component, None)
        if outage is not None:
            metrics.INFRA_DOWN.labels(component).set(0)
            log.warning("fault.%s.cleared after_s=%.1f failures=%s places=%s", component, outage.lasted_s(),
                        outage.failures, ",".join(sorted(outage.places)))

    def down_for_s(self, component: Component) -> float:
        """How long `component` has been down (0 when it is not)."""
        outage = self.outages.get(component)
        return 0.0 if outage is None else outage.lasted_s()

    def report(self) -> list[dict[str, object]]:
        """For /healthz: each outage in progress."""
        return [{"component": outage.component, "down_s": round(outage.lasted_s(), 1), "error": outage.error,
                 "places": sorted(outage.places), "failures": outage.failures}
                for outage in self.outages.values()]


FAULTS = Faults()  # one per process, like the metrics registry
