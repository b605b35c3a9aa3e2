"""
Reloading a running gateway (infini_gateway.reload) and stopping its
entries gracefully (infini_gateway.entry.drain_connections), on fakes.
"""

import copy

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport

from infini_gateway import ConfigError, build_service
from infini_gateway.config import config_from_dict
from infini_gateway.entry import drain_connections
from infini_gateway.filters import Filter
from infini_gateway.reload import ConfigWatcher, ReloadError
from tests.unit._site import request

BASE = {
    "entry": [{"name": "web", "network": {"binding": "127.0.0.1:8001"}}],
    "router": [{"name": "default", "default_flow": "hello"}],
    "flow": [{"name": "hello", "filter": [{"echo": {"message": "v1"}}]}],
    "upstream": [
        {"name": "same", "endpoints": ["http://127.0.0.1:9001"]},
        {
            "name": "changed",
            "endpoints": ["http://127.0.0.1:9002", "http://127.0.0.1:9003"],
        },
    ],
}


def variant(message="v1", **changes):
    data = copy.deepcopy(BASE)
    data["flow"][0]["filter"][0]["echo"]["message"] = message
    data.update(changes)
    return config_from_dict(data)


def running(config=None, reactor=None):
    reactor = reactor or MemoryReactorClock()
    service = build_service(config or variant(), reactor=reactor)
    service.startService()
    return service, reactor


def body(service, entry="web"):
    return request(service.entries[entry].site).body


def test_kept_entry_switches_router_without_rebinding():
    """New requests use the new flows; the listening port is the same object."""
    service, reactor = running()
    port = service.entries["web"].port
    assert body(service) == b"v1"
    result = service.reload(variant("v2"))
    assert result["entries"]["kept"] == ["web"]
    assert service.entries["web"].port is port
    assert len(reactor.tcpServers) == 1
    assert body(service) == b"v2"
    assert (
        service.metrics.value(
            "infini_gateway_config_reloads_total", {"result": "success"}
        )
        == 1
    )


def test_in_flight_request_finishes_on_the_old_flow():
    """A request waiting in a filter when the reload happens ends on its old flow."""
    service, _ = running()
    waiting = Deferred()

    class Wait(Filter):
        name = "wait"

        def filter(self, ctx):
            return waiting

    router = service.entries["web"].site.resource
    old = router.default_flow
    router.default_flow = type(old)(
        "hello", [("hello", "wait", Wait({}, None))] + list(old.steps)
    )
    exchange = request(service.entries["web"].site)
    assert exchange.status is None
    service.reload(variant("v2"))
    waiting.callback(None)
    assert exchange.read().body == b"v1"
    assert body(service) == b"v2"


def test_invalid_configuration_changes_nothing(tmp_path):
    """A file that does not validate: every object stays, the failure is counted."""
    import yaml

    path = tmp_path / "gateway.yml"
    path.write_text(yaml.safe_dump(BASE))
    service, _ = running(config=path)
    before = (service.config, service.routers, service.upstreams, dict(service.entries))
    broken = copy.deepcopy(BASE)
    broken["router"][0]["default_flow"] = "nowhere"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(ConfigError, match="nowhere"):
        service.reload_file()
    assert (
        service.config,
        service.routers,
        service.upstreams,
        dict(service.entries),
    ) == before
    assert body(service) == b"v1"
    assert service.reloader.last["ok"] is False
    assert service.metrics.value("infini_gateway_config_last_reload_successful") == 0


def test_added_and_removed_entries():
    """An added entry listens at once; a removed one stops listening."""
    service, _reactor = running()
    second = {"name": "second", "network": {"binding": "127.0.0.1:8002"}}
    result = service.reload(variant("v2", entry=BASE["entry"] + [second]))
    assert result["entries"]["added"] == ["second"]
    assert service.entries["second"].port is not None
    assert service.entries["second"].parent is service
    assert body(service, "second") == b"v2"
    removed = service.entries["second"]
    result = service.reload(variant("v3"))
    assert result["entries"]["removed"] == ["second"]
    assert removed.port is None and removed.parent is None
    assert "second" not in service.entries


def test_bind_failure_refuses_the_reload():
    """An added entry that cannot listen: nothing changes, the error says why."""

    class Reactor(MemoryReactorClock):
        def listenTCP(self, port, factory, backlog=50, interface=""):
            if port == 8003:
                raise CannotListenError(
                    interface, port, OSError(98, "Address already in use")
                )
            return super().listenTCP(port, factory, backlog, interface)

    service, _ = running(reactor=Reactor())
    before = service.routers
    third = {"name": "third", "network": {"binding": "127.0.0.1:8003"}}
    with pytest.raises(ReloadError) as caught:
        service.reload(variant("v2", entry=BASE["entry"] + [third]))
    assert "cannot listen on 127.0.0.1:8003" in str(caught.value)
    assert service.routers is before and "third" not in service.entries
    assert body(service) == b"v1"
    assert (
        service.metrics.value(
            "infini_gateway_config_reloads_total", {"result": "failure"}
        )
        == 1
    )


def test_upstreams_kept_or_health_carried():
    """
    An unchanged upstream is the same object; in a changed one, an endpoint
    still configured keeps its health.
    """
    service, _ = running()
    same = service.upstreams["same"]
    service.upstreams["changed"].endpoints[1].healthy = False
    upstreams = copy.deepcopy(BASE["upstream"])
    upstreams[1]["endpoints"] = ["http://127.0.0.1:9003", "http://127.0.0.1:9004"]
    result = service.reload(variant("v1", upstream=upstreams))
    assert service.upstreams["same"] is same
    assert result["upstreams"]["kept"] == ["same"]
    assert result["upstreams"]["replaced"] == ["changed"]
    carried = {e.url: e.healthy for e in service.upstreams["changed"].endpoints}
    assert carried == {"http://127.0.0.1:9003": False, "http://127.0.0.1:9004": True}


def test_service_removal_is_refused(monkeypatch):
    """The services module's objection refuses the reload."""
    from infini_gateway import services

    service, _ = running()
    monkeypatch.setattr(
        services, "check_service_removal", lambda old, new: ["service x has routes"]
    )
    with pytest.raises(ReloadError, match="service x has routes"):
        service.reload(variant("v2"))
    assert body(service) == b"v1"


def test_watcher_reloads_a_changed_file(tmp_path):
    """The watcher reloads when the file changes, and only then."""
    import yaml

    path = tmp_path / "gateway.yml"
    data = copy.deepcopy(BASE)
    data["configs"] = {"auto_reload": True}
    path.write_text(yaml.safe_dump(data))
    service, _ = running(config=path)
    clock = Clock()
    watcher = ConfigWatcher(service, str(path), 1.0, clock=clock)
    watcher.startService()
    data["flow"][0]["filter"][0]["echo"]["message"] = "v2"
    path.write_text(yaml.safe_dump(data) + "\n# changed\n")
    clock.advance(1)
    assert body(service) == b"v2"
    path.write_text("entry: [")
    clock.advance(1)
    assert body(service) == b"v2"
    watcher.stopService()


def connect(policy, peer_port=40000):
    peer = IPv4Address("TCP", "127.0.0.1", peer_port)
    protocol = policy.buildProtocol(peer)
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 8001), peerAddress=peer
    )
    protocol.makeConnection(transport)
    return protocol, transport


def test_drain_closes_idle_connections_and_waits_for_busy_ones():
    """
    Idle connections close at once; one with a request in flight gets its
    response (with Connection: close) and is closed after it.
    """
    service, reactor = running()
    entry = service.entries["web"]
    waiting = Deferred()

    class Wait(Filter):
        name = "wait"

        def filter(self, ctx):
            return waiting

    router = entry.site.resource
    router.default_flow = type(router.default_flow)(
        "hello", [("hello", "wait", Wait({}, None))] + list(router.default_flow.steps)
    )
    idle, idle_transport = connect(entry.policy, 40001)
    busy, busy_transport = connect(entry.policy, 40002)
    busy.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    done = drain_connections(entry.policy, reactor, 30.0, "web")
    assert idle_transport.disconnecting
    assert not busy_transport.disconnecting and not done.called
    waiting.callback(None)
    assert b"connection: close" in busy_transport.value().lower()
    assert busy_transport.disconnecting
    for protocol in (idle, busy):
        protocol.connectionLost(None)
    reactor.advance(0.1)
    assert done.called


def test_drain_aborts_what_remains_at_the_deadline():
    service, reactor = running()
    entry = service.entries["web"]
    entry.site.resource.default_flow = type(entry.site.resource.default_flow)(
        "hello",
        [
            (
                "hello",
                "wait",
                type("W", (Filter,), {"name": "w", "filter": lambda s, c: Deferred()})(
                    {}, None
                ),
            )
        ],
    )
    busy, _transport = connect(entry.policy)
    busy.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    done = drain_connections(entry.policy, reactor, 1.0, "web")
    reactor.advance(0.5)
    assert not done.called
    reactor.advance(0.6)
    reactor.advance(0)
    assert done.called


def test_tcp_entry_keeps_its_socket_and_forwards_to_the_new_upstream():
    """A tcp entry's listener is kept; new connections use the new upstream."""
    data = copy.deepcopy(BASE)
    data["entry"].append(
        {
            "name": "db",
            "protocol": "tcp",
            "upstream": "same",
            "network": {"binding": "127.0.0.1:8005"},
        }
    )
    service, _ = running(config=config_from_dict(data))
    entry = service.entries["db"]
    port, factory = entry.port, entry.policy.wrappedFactory
    data["upstream"][0]["endpoints"] = ["http://127.0.0.1:9009"]
    result = service.reload(config_from_dict(data))
    assert "db" in result["entries"]["kept"]
    assert entry.port is port and service.entries["db"] is entry
    assert entry.policy.wrappedFactory is not factory
    assert entry.policy.wrappedFactory is entry.site
