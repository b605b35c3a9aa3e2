"""
Several processes serving the same entries: ``twistd infini-gateway --workers N``.

The twistd process becomes a supervisor: it binds none of the entries
itself, but starts N worker processes (twistd again, with the same
configuration file and C{--worker}), and each worker binds every entry with
C{SO_REUSEPORT} forced on, so that the kernel spreads new connections over
the workers.  The supervisor keeps what must exist once: the admin API and
the floating IP (workers run with both off); it generates the entries' TLS
material before the workers start (so that they do not race to write it),
and checks that each entry's address can be bound, so that a taken port
stops the gateway at once.

A worker that dies is started again, after a delay that doubles with each
quick death in a row (L{BACKOFF_FIRST} up to L{BACKOFF_MAX}), and at most
L{MAX_RESTARTS} times a minute per worker.  SIGTERM (and SIGINT) stop the
supervisor, which sends SIGTERM to every worker and waits for them (each has
C{shutdown_timeout} to let requests finish; one still there a little after
that is killed).  SIGHUP, the admin API's reload and C{configs.auto_reload}
reload the supervisor and send SIGHUP to every worker, which reloads the file
itself.  A worker whose supervisor is gone stops by itself.
"""

import errno
import os
import socket
import sys
from typing import Any, Dict, List, Optional

import attrs

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from infini_gateway.config.model import GatewayConfig
from infini_gateway.entry import EntryBindError

log = Logger()

# Seconds before a dead worker is started again, doubled for each worker
# death in a row that came less than QUICK_DEATH seconds after its start.
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 10.0
QUICK_DEATH = 10.0
# Starts of one worker within RESTART_WINDOW seconds, at most.
MAX_RESTARTS = 10
RESTART_WINDOW = 60.0
# Seconds a worker has past shutdown_timeout before it is killed.
KILL_MARGIN = 5.0
# How often a worker checks that its supervisor is still there.
PARENT_CHECK_INTERVAL = 1.0


def worker_config(config: GatewayConfig) -> GatewayConfig:
    """
    A worker's view of C{config}: every entry shares its port
    (C{reuse_port}), and no admin API, floating IP or file watcher (the
    supervisor has them).
    """
    entries = tuple(
        attrs.evolve(entry, network=attrs.evolve(entry.network, reuse_port=True))
        for entry in config.entries
    )
    return attrs.evolve(
        config,
        entries=entries,
        api=attrs.evolve(config.api, enabled=False),
        floating_ip=attrs.evolve(config.floating_ip, enabled=False),
        configs=attrs.evolve(config.configs, auto_reload=False),
    )


def supervisor_config(config: GatewayConfig) -> GatewayConfig:
    """The supervisor's view of C{config}: no entry (the workers serve them)."""
    return attrs.evolve(config, entries=())


def sharing_problems(config: GatewayConfig) -> List[str]:
    """Why C{config}'s entries cannot be shared by several workers, if they cannot."""
    problems = []
    for entry in config.entries:
        if not entry.enabled:
            continue
        where = f"{config.source}: entry {entry.name!r}"
        if entry.network.port == 0:
            problems.append(f"{where}: --workers needs a fixed port, not 0")
        if entry.network.skip_occupied_port:
            problems.append(f"{where}: --workers cannot be used with skip_occupied_port")
    return problems


def check_bindable(config: GatewayConfig) -> None:
    """
    Bind (without listening) each enabled entry's address with
    C{SO_REUSEPORT}, as the workers will, and close it again.

    @raise EntryBindError: an address cannot be bound.
    """
    for entry in config.entries:
        if not entry.enabled:
            continue
        network = entry.network
        family = socket.AF_INET6 if ":" in network.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((network.host, network.port))
        except OSError as e:
            reason = e.strerror or errno.errorcode.get(e.errno or 0, str(e))
            raise EntryBindError(
                f"entry {entry.name!r}: cannot listen on {network.binding}: {reason}"
            ) from e
        finally:
            sock.close()


def worker_command(
    config_path: str, logfile: Optional[str] = None, pypy_jit: Optional[str] = None
) -> List[str]:
    """
    The command line of one worker: twistd in the foreground, no pid file,
    the supervisor's log file and C{--pypy-jit} (when given).
    """
    command = [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
    ]
    if logfile:
        command.append(f"--logfile={logfile}")
    command += ["infini-gateway", "--config", config_path, "--worker"]
    if pypy_jit is not None:
        command.append(f"--pypy-jit={pypy_jit}")
    return command


class _Worker(ProcessProtocol):
    """One worker process, reporting its end to the supervisor."""

    def __init__(self, supervisor: "WorkerSupervisor", index: int, started: float) -> None:
        self.supervisor = supervisor
        self.index = index
        self.started = started
        self.pid: Optional[int] = None

    def processEnded(self, reason: Any) -> None:
        self.supervisor._ended(self, reason.value)


class WorkerSupervisor(Service):
    """
    Starts C{count} workers running C{command}, starts again those that
    die, signals them all, and stops them when it stops.

    @ivar workers: the live workers, by index (0 to C{count} - 1).
    """

    def __init__(
        self,
        reactor: Any,
        count: int,
        command: List[str],
        config: GatewayConfig,
        shutdown_timeout: float = 30.0,
        env: Optional[Dict[str, str]] = None,
    ) -> None:
        self.reactor = reactor
        self.count = count
        self.command = command
        self.config = config
        self.shutdown_timeout = shutdown_timeout
        self.env = env
        self.workers: Dict[int, _Worker] = {}
        self._starts: Dict[int, List[float]] = {}
        self._quick_deaths: Dict[int, int] = {}
        self._pending: Dict[int, Any] = {}
        self._stopped: List[Deferred] = []

    def prepare(self) -> None:
        """
        Generate the entries' TLS material and check their addresses, before
        any worker starts; raises as the entries themselves would.
        """
        from infini_gateway.service import Runtime
        from infini_gateway.tls import server_options

        runtime = Runtime(self.reactor, self.config)
        for entry in self.config.entries:
            if entry.enabled and entry.tls.enabled:
                server_options(entry, runtime.resolve(self.config.paths.data), self.config.base_dir)
        check_bindable(self.config)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.prepare()

    def startService(self) -> None:
        super().startService()
        names = [entry.name for entry in self.config.entries if entry.enabled]
        log.info(
            "entries {entries} served by {count} worker processes",
            entries=", ".join(names),
            count=self.count,
        )
        for index in range(self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._pending.pop(index, None)
        now = self.reactor.seconds()
        starts = [t for t in self._starts.get(index, []) if now - t < RESTART_WINDOW]
        starts.append(now)
        self._starts[index] = starts
        worker = _Worker(self, index, now)
        env = dict(os.environ if self.env is None else self.env)
        transport = self.reactor.spawnProcess(
            worker, self.command[0], self.command, env=env, childFDs={0: "w", 1: 1, 2: 2}
        )
        worker.pid = transport.pid
        self.workers[index] = worker
        log.info("worker {index} started (pid {pid})", index=index, pid=worker.pid)

    def _ended(self, worker: _Worker, reason: Any) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        status = getattr(reason, "exitCode", None)
        how = f"exit status {status}" if status is not None else f"signal {reason.signal}"
        if not self.running:
            log.info(
                "worker {index} (pid {pid}) stopped: {how}",
                index=worker.index,
                pid=worker.pid,
                how=how,
            )
            if not self.workers:
                stopped, self._stopped = self._stopped, []
                for d in stopped:
                    d.callback(None)
            return
        now = self.reactor.seconds()
        if now - worker.started < QUICK_DEATH:
            self._quick_deaths[worker.index] = self._quick_deaths.get(worker.index, 0) + 1
        else:
            self._quick_deaths[worker.index] = 0
        quick = self._quick_deaths[worker.index]
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(quick - 1, 0))
        starts = [t for t in self._starts.get(worker.index, []) if now - t < RESTART_WINDOW]
        if len(starts) >= MAX_RESTARTS:
            delay = max(delay, starts[0] + RESTART_WINDOW - now)
        log.warn(
            "worker {index} (pid {pid}) died ({how}); starting it again in {delay:.1f}s",
            index=worker.index,
            pid=worker.pid,
            how=how,
            delay=delay,
        )
        self._pending[worker.index] = self.reactor.callLater(delay, self._spawn, worker.index)

    def signal_workers(self, name: str) -> None:
        """Send the signal C{name} (C{"TERM"}, C{"HUP"}, C{"KILL"}) to every worker."""
        for worker in list(self.workers.values()):
            try:
                worker.transport.signalProcess(name)
            except Exception:
                log.failure("signalling worker {index} failed", index=worker.index)

    def stopService(self) -> Deferred:
        super().stopService()
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        if not self.workers:
            return succeed(None)
        d: Deferred = Deferred()
        self._stopped.append(d)
        self.signal_workers("TERM")
        kill = self.reactor.callLater(
            self.shutdown_timeout + KILL_MARGIN, self.signal_workers, "KILL"
        )

        def stopped(result: Any) -> Any:
            if kill.active():
                kill.cancel()
            return result

        return d.addBoth(stopped)


class ParentWatch(Service):
    """
    In a worker: stop the reactor once the supervisor is gone (the worker's
    parent changes), so that no worker outlives it.
    """

    def __init__(self, reactor: Any, interval: float = PARENT_CHECK_INTERVAL) -> None:
        self.reactor = reactor
        self.interval = interval
        self.parent_pid = os.getppid()
        self._loop: Any = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self._check)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False).addErrback(
            lambda f: log.failure("watching the supervisor failed", f)
        )

    def _check(self) -> None:
        if os.getppid() != self.parent_pid:
            log.warn("the supervisor (pid {pid}) is gone: stopping", pid=self.parent_pid)
            self._loop.stop()
            self.reactor.stop()

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()


__all__ = [
    "ParentWatch",
    "WorkerSupervisor",
    "check_bindable",
    "sharing_problems",
    "supervisor_config",
    "worker_command",
    "worker_config",
]
