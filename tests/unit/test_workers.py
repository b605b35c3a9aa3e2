"""
The supervisor of ``--workers`` on a fake reactor: workers started again
after a delay doubling with each quick death, at most L{MAX_RESTARTS} starts
a minute, signals passed to every worker, stopping that waits for them (and
kills those that outlive the shutdown timeout); and the configuration each
process sees.
"""

import pytest


from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from infini_gateway.config import config_from_dict
from infini_gateway.workers import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    MAX_RESTARTS,
    RESTART_WINDOW,
    WorkerSupervisor,
    sharing_problems,
    supervisor_config,
    worker_command,
    worker_config,
)

CONFIG = {
    "entry": [
        {"name": "web", "router": "r", "network": {"binding": "127.0.0.1:8000"}},
        {"name": "off", "router": "r", "enabled": False, "network": {"binding": "127.0.0.1:0"}},
    ],
    "router": [{"name": "r", "default_flow": "f"}],
    "flow": [{"name": "f", "filter": [{"echo": {"message": "hi"}}]}],
    "api": {"enabled": True, "network": {"binding": "127.0.0.1:2900"}},
    "configs": {"auto_reload": True},
}


class FakeTransport:
    def __init__(self, pid):
        self.pid = pid
        self.signals = []

    def signalProcess(self, name):
        self.signals.append(name)


class FakeReactor(Clock):
    """A Clock that records spawned processes instead of running them."""

    def __init__(self):
        super().__init__()
        self.spawned = []

    def spawnProcess(self, protocol, executable, args, env=None, childFDs=None):
        transport = FakeTransport(1000 + len(self.spawned))
        protocol.transport = transport
        self.spawned.append((protocol, args, childFDs))
        return transport


def started(count=2, shutdown_timeout=30.0):
    reactor = FakeReactor()
    config = config_from_dict(CONFIG)
    supervisor = WorkerSupervisor(reactor, count, ["python", "-c", "x"], config, shutdown_timeout)
    supervisor.startService()
    return reactor, supervisor


def die(supervisor, index, reason=None):
    worker = supervisor.workers[index]
    worker.processEnded(Failure(reason or ProcessTerminated(signal=9)))


def test_each_worker_is_started_with_the_command_and_shared_output():
    reactor, supervisor = started(2)
    assert sorted(supervisor.workers) == [0, 1]
    assert [args for _, args, _ in reactor.spawned] == [["python", "-c", "x"]] * 2
    assert all(fds == {0: "w", 1: 1, 2: 2} for _, _, fds in reactor.spawned)


def test_a_dead_worker_starts_again_after_a_doubling_delay():
    reactor, supervisor = started(1)
    delays = []
    for _ in range(4):
        die(supervisor, 0)
        assert 0 not in supervisor.workers
        (call,) = reactor.getDelayedCalls()
        delays.append(call.getTime() - reactor.seconds())
        reactor.advance(delays[-1])
        assert 0 in supervisor.workers
    assert delays == pytest.approx([BACKOFF_FIRST * 2**n for n in range(4)])


def test_a_worker_that_ran_long_gets_the_first_delay_and_the_delay_is_capped():
    reactor, supervisor = started(1)
    reactor.advance(3600)
    die(supervisor, 0)
    (call,) = reactor.getDelayedCalls()
    assert call.getTime() - reactor.seconds() == pytest.approx(BACKOFF_FIRST)
    supervisor._quick_deaths[0] = 50
    reactor.advance(BACKOFF_FIRST)
    die(supervisor, 0)
    (call,) = reactor.getDelayedCalls()
    assert call.getTime() - reactor.seconds() <= RESTART_WINDOW
    assert call.getTime() - reactor.seconds() >= BACKOFF_MAX


def test_at_most_max_restarts_starts_a_minute():
    reactor, supervisor = started(1)
    supervisor_starts = lambda: sum(1 for p, _, _ in reactor.spawned if p.index == 0)
    # Deaths long enough apart that the backoff stays at its first step.
    while supervisor_starts() < MAX_RESTARTS:
        reactor.advance(1)
        supervisor._quick_deaths[0] = 0
        die(supervisor, 0)
        reactor.advance(BACKOFF_FIRST)
    first = reactor.spawned[0][0].started
    supervisor._quick_deaths[0] = 0
    die(supervisor, 0)
    (call,) = reactor.getDelayedCalls()
    assert call.getTime() >= first + RESTART_WINDOW


def test_signals_reach_every_worker():
    reactor, supervisor = started(2)
    supervisor.signal_workers("HUP")
    assert [p.transport.signals for p, _, _ in reactor.spawned] == [["HUP"], ["HUP"]]


def test_stopping_terms_the_workers_and_waits_for_them():
    reactor, supervisor = started(2)
    die(supervisor, 1)
    d = supervisor.stopService()
    # The restart of worker 1 is cancelled: stopping starts nothing.
    assert reactor.getDelayedCalls() and all(
        call.func == supervisor.signal_workers for call in reactor.getDelayedCalls()
    )
    done = []
    d.addCallback(done.append)
    assert reactor.spawned[0][0].transport.signals == ["TERM"]
    assert done == []
    die(supervisor, 0, ProcessDone(0))
    assert done == [None]
    assert reactor.getDelayedCalls() == []


def test_a_worker_outliving_the_shutdown_timeout_is_killed():
    reactor, supervisor = started(1, shutdown_timeout=2.0)
    supervisor.stopService()
    reactor.advance(2.0 + 5.0)
    assert reactor.spawned[0][0].transport.signals == ["TERM", "KILL"]


def test_each_process_sees_its_part_of_the_configuration():
    config = config_from_dict(CONFIG)
    worker = worker_config(config)
    assert all(entry.network.reuse_port for entry in worker.entries)
    assert not worker.api.enabled and not worker.floating_ip.enabled
    assert not worker.configs.auto_reload
    supervisor = supervisor_config(config)
    assert supervisor.entries == () and supervisor.api.enabled


def test_sharing_needs_fixed_ports_and_no_skip_occupied_port():
    config = config_from_dict(CONFIG)
    assert sharing_problems(config) == []
    zero = dict(CONFIG, entry=[{"name": "z", "router": "r", "network": {"binding": "127.0.0.1:0"}}])
    assert "needs a fixed port" in sharing_problems(config_from_dict(zero))[0]
    skip = dict(
        CONFIG,
        entry=[
            {
                "name": "s",
                "router": "r",
                "network": {"binding": "127.0.0.1:8000", "skip_occupied_port": True},
            }
        ],
    )
    assert "skip_occupied_port" in sharing_problems(config_from_dict(skip))[0]


def test_the_worker_command_runs_twistd_in_the_foreground():
    command = worker_command("/etc/gw.yml", "/var/log/gw.log")
    assert command[3:] == [
        "-n",
        "--pidfile=",
        "--logfile=/var/log/gw.log",
        "infini-gateway",
        "--config",
        "/etc/gw.yml",
        "--worker",
    ]


def test_workers_get_the_supervisors_pypy_jit_parameters():
    command = worker_command("/etc/gw.yml", None, "threshold=300")
    assert command[-1] == "--pypy-jit=threshold=300"
    assert not any(part.startswith("--pypy-jit") for part in worker_command("/etc/gw.yml"))
