"""The app-scoped event bus: subscriptions by type, isolation of failing handlers, no
module-global registry (two buses never share events), and the keys -> limits -> webhooks
import cycle gone."""
from __future__ import annotations

import threading

from llmp.events import USAGE_LIMIT_REACHED, USAGE_RECORDED, Bus
from llmp.services.limits import Limiter

from test_layers import ROOT, _imports, _module


def test_subscribe_by_type_and_unsubscribe():
    bus = Bus()
    seen_all, seen_usage = [], []
    bus.subscribe(seen_all.append)
    stop = bus.subscribe(seen_usage.append, types=[USAGE_LIMIT_REACHED])
    e1 = bus.publish("batch.completed", {"id": "batch_1"}, key_id="key_a")
    e2 = bus.publish(USAGE_LIMIT_REACHED, {"key_id": "key_a"})
    assert seen_all == [e1, e2] and seen_usage == [e2]
    assert e1.id.startswith("evt_") and e1.id != e2.id and e1.key_id == "key_a"
    stop()
    bus.publish(USAGE_LIMIT_REACHED, {})
    assert len(seen_usage) == 1 and len(seen_all) == 3


def test_a_failing_handler_breaks_neither_the_publisher_nor_the_others(caplog):
    bus = Bus()
    got = []

    def boom(event):
        raise RuntimeError("handler bug")

    bus.subscribe(boom)
    bus.subscribe(got.append)
    event = bus.publish("batch.failed", {})
    assert got == [event]
    assert "handler bug" in caplog.text


def test_buses_are_independent_and_thread_safe():
    a, b = Bus(), Bus()
    got_a, got_b = [], []
    a.subscribe(got_a.append)
    b.subscribe(got_b.append)
    threads = [threading.Thread(target=lambda: [a.publish("x", {}) for _ in range(200)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got_a) == 800 and got_b == []


def test_limiter_counts_usage_rows_from_its_own_bus_only():
    """The limiter listens to `usage.recorded` on the bus it was given; another app's bus
    (another Limiter) never sees those rows."""
    bus, other = Bus(), Bus()
    mine, theirs = Limiter(None, bus=bus), Limiter(None, bus=other)
    settled = []
    mine.settle = settled.append  # the bus handler calls settle(rows)
    theirs.settle = lambda rows: settled.append(("wrong bus", rows))
    rows = [{"key_id": "key_a", "status": 200}]
    bus.publish(USAGE_RECORDED, {"rows": rows})
    assert settled == [rows]


def test_services_import_no_cycle():
    """limits no longer imports webhooks: the keys -> limits -> webhooks -> keys cycle is gone,
    and no other cycle runs through the services (imports inside functions count too)."""
    graph = {}
    for f in sorted((ROOT / "services").rglob("*.py")):
        mod = _module(f).removesuffix(".__init__")
        graph[mod] = {m for _, m in _imports(f.read_text(), _module(f))
                      if m.startswith("llmp.services.")}
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    assert "llmp.services.webhooks" not in graph["llmp.services.limits"]

    def cycle_from(m, path):
        if m in path:
            return path[path.index(m):] + [m]
        for d in sorted(graph[m]):
            found = cycle_from(d, path + [m])
            if found:
                return found
        return None

    cycles = [c for c in (cycle_from(m, []) for m in graph) if c]
    assert cycles == []
