"""
twistd's view of the gateway: ``twistd -n infini-gateway --config gateway.yml``.

The configuration is loaded and validated while the options are parsed, so
an invalid file stops twistd before anything binds, with one message per
problem.  ``--check`` stops there too, after printing what would listen.
"""

import os
import signal
import sys
from typing import Any, Optional

from twisted.logger import Logger
from twisted.python import usage

from infini_gateway.config import ConfigError, load_config
from infini_gateway.config.model import GatewayConfig
from infini_gateway.entry import EntryBindError
from infini_gateway.flow import build_flows
from infini_gateway.service import GatewayService, Runtime, freeze_heap

log = Logger()

# PyPy's JIT parameters for the gateway (see pypyjit.PARAMETER_DOCS): the
# defaults (threshold=1039, function_threshold=1619, trace_eagerness=200)
# suit a loop in a script, not a request path of a few hundred functions
# reached through Deferred callbacks.  With them a gateway under load runs
# half interpreted for about a minute (some 70,000 requests) before it
# reaches its compiled speed; with these, in about ten seconds, and the
# compiled speed is the same.
PYPY_JIT_PARAMS = "threshold=300,function_threshold=400,trace_eagerness=50"


def tune_pypy_jit(params: str = PYPY_JIT_PARAMS) -> bool:
    """
    Set PyPy's JIT parameters C{params} (C{"name=value,..."}, as for
    C{pypy --jit}); nothing on CPython, or when C{params} is empty.

    @return: whether they were set.
    """
    if not params:
        return False
    try:
        import pypyjit  # type: ignore[import-not-found]
    except ImportError:
        return False
    pypyjit.set_param(params)
    return True


class Options(usage.Options):
    synopsis = "--config gateway.yml [--check]"
    longdesc = (
        "Run infini-gateway: the entries, routers and flows of gateway.yml. "
        "With --check, validate the configuration, print what would listen, "
        "and exit 0 (valid) or 1 (invalid) without binding anything."
    )
    optParameters = [
        ["config", "c", "gateway.yml", "The configuration file."],
        [
            "workers",
            "w",
            1,
            "Worker processes serving the entries (each binds them with SO_REUSEPORT).",
            int,
        ],
        [
            "pypy-jit",
            None,
            PYPY_JIT_PARAMS,
            "PyPy's JIT parameters, as for pypy --jit (empty: PyPy's defaults;"
            " ignored on CPython).",
        ],
    ]
    optFlags = [
        ["check", None, "Validate the configuration and exit without binding."],
        ["worker", None, "Run as one worker of a --workers supervisor (set by it)."],
    ]

    def postOptions(self) -> None:
        try:
            config = load_config(self["config"])
            # Filters check what a schema cannot (regular expressions, say).
            build_flows(config.flows, Runtime(None, config))
        except ConfigError as e:
            _fail(str(e))
        if self["workers"] < 1:
            _fail(f"infini-gateway: --workers must be at least 1, not {self['workers']}")
        try:
            tune_pypy_jit(self["pypy-jit"])
        except ValueError:
            _fail(
                f"infini-gateway: --pypy-jit: expected NAME=VALUE,... of PyPy's JIT"
                f" parameters (pypyjit.PARAMETER_DOCS), got {self['pypy-jit']!r}"
            )
        if self["workers"] > 1 and not self["check"]:
            from infini_gateway.workers import sharing_problems

            problems = sharing_problems(config)
            if problems:
                _fail("\n".join(problems))
        if config.floating_ip.enabled and not self["check"] and not self["worker"]:
            from infini_gateway.floating_ip import capability_problem

            problem = capability_problem()
            if problem is not None:
                _fail(f"infini-gateway: {problem}")
        self["gateway_config"] = config
        if self["check"]:
            sys.exit(check(config))


def _fail(message: str) -> None:
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()
    sys.exit(1)


def describe(config: GatewayConfig) -> str:
    """What the gateway would listen on, one line an entry."""
    lines = [f"{config.source}: configuration is valid"]
    for entry in config.entries:
        scheme = "https" if entry.tls.enabled else "http"
        state = "would listen on" if entry.enabled else "is disabled:"
        extras = []
        if entry.network.publish:
            extras.append(f"published as {entry.network.publish}")
        if entry.network.reuse_port:
            extras.append("reuse_port")
        if entry.network.skip_occupied_port:
            extras.append("skip_occupied_port")
        if entry.tls.enabled and not entry.tls.cert_file:
            extras.append(f"certificate generated under {config.paths.data}/tls")
        extra = f" ({', '.join(extras)})" if extras else ""
        target = f"router {entry.router!r}"
        if entry.protocol != "http":
            from infini_gateway.entry import entry_scheme

            scheme = entry_scheme(entry)
            if entry.protocol == "tcp":
                target = f"upstream {entry.upstream!r}"
            else:
                names = [route.server_name for route in entry.sni_routes]
                names += ["default"] if entry.sni_default else []
                target = f"SNI passthrough ({', '.join(names)})"
        lines.append(
            f"entry {entry.name!r} {state} {scheme}://{entry.network.binding}"
            f" -> {target}{extra}"
        )
    return "\n".join(lines) + "\n"


def check(config: GatewayConfig) -> int:
    """
    Validate what the loader cannot see without reading other files (the
    configured certificates), print what would listen; 0 if all is well.
    """
    from infini_gateway.tls import TLSConfigError, server_options

    runtime = Runtime(None, config)
    problems = []
    for entry in config.entries:
        if entry.enabled and entry.tls.enabled and entry.tls.cert_file:
            try:
                server_options(entry, runtime.resolve(config.paths.data), config.base_dir)
            except TLSConfigError as e:
                problems.append(f"{config.source}: entry {entry.name!r}: {e}")
    floating_ip: list = []
    if config.floating_ip.enabled:
        from infini_gateway.floating_ip import check_config

        floating_ip, floating_ip_problems = check_config(config)
        problems += floating_ip_problems
    if problems:
        sys.stderr.write("\n".join(problems) + "\n")
        return 1
    sys.stdout.write(describe(config) + "".join(line + "\n" for line in floating_ip))
    return 0


class _TwistdGatewayService(GatewayService):
    """
    The gateway as twistd runs it: a listener or certificate problem ends
    the process with its message, and SIGTERM / SIGINT stop it with exit
    status 0 (twistd would re-raise the signal after shutting down, so that
    the process dies of it, which service managers report as a failure).

    Stopping is graceful: the entries stop listening and requests in
    flight have C{shutdown_timeout} to finish (see L{EntryService.stopService}).
    SIGHUP reloads the configuration file (L{GatewayService.reload_file}).
    """

    _stopping = False
    freezes_heap = True

    def startService(self) -> None:
        super().startService()
        # After the reactor has installed its own handlers, which replace ours.
        self.reactor.callWhenRunning(self._handle_signals)
        self.reactor.callWhenRunning(freeze_heap)

    def _handle_signals(self) -> None:
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self._stop_on_signal)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._reload_on_signal)

    def _stop_on_signal(self, number, frame) -> None:
        if self._stopping:
            log.info(
                "received {signal} again: still letting requests finish (up to {timeout}s)",
                signal=signal.Signals(number).name,
                timeout=self.config.shutdown_timeout,
            )
            return
        self._stopping = True
        log.info(
            "received {signal}, shutting down: requests in flight have {timeout}s to finish",
            signal=signal.Signals(number).name,
            timeout=self.config.shutdown_timeout,
        )
        self.reactor.callFromThread(self.reactor.stop)

    def _reload_on_signal(self, number, frame) -> None:
        log.info("received SIGHUP, reloading {path}", path=self.config_path)
        self.reactor.callFromThread(self._reload_quietly)

    def _reload_quietly(self) -> None:
        from infini_gateway.reload import ReloadError

        try:
            self.reload_file()
        except (ConfigError, ReloadError):
            pass  # logged by the reloader; the gateway keeps its configuration
        except Exception:
            log.failure("reload failed")

    def privilegedStartService(self) -> None:
        from infini_gateway.floating_ip import FloatingIPError
        from infini_gateway.tls import TLSConfigError

        try:
            super().privilegedStartService()
        except (EntryBindError, TLSConfigError, FloatingIPError) as e:
            for service in list(self):
                service.stopService()
            _fail(f"infini-gateway: {e}")


class _Supervisor(_TwistdGatewayService):
    """
    The twistd process of C{--workers N}: the gateway without its entries
    (the admin API, the floating IP, the file watcher), and the
    L{infini_gateway.workers.WorkerSupervisor} of the workers that serve
    them.  A reload reloads it, then the workers (SIGHUP).
    """

    workers: Any = None

    def reload_file(self, path: Optional[str] = None) -> Any:
        try:
            return super().reload_file(path)
        finally:
            if self.workers is not None:
                self.workers.signal_workers("HUP")


def makeService(options: Options, reactor: Optional[Any] = None) -> GatewayService:
    config = options.get("gateway_config") or load_config(options["config"])
    tune_pypy_jit(options.get("pypy-jit", PYPY_JIT_PARAMS))
    if options.get("worker"):
        from infini_gateway.workers import ParentWatch, worker_config

        service = _TwistdGatewayService(worker_config(config), reactor)
        service.adapt_config = worker_config  # type: ignore[method-assign]
        ParentWatch(service.reactor).setServiceParent(service)
        return service
    workers = options.get("workers") or 1
    if workers == 1:
        return _TwistdGatewayService(config, reactor)
    from infini_gateway.workers import WorkerSupervisor, supervisor_config, worker_command

    supervisor = _Supervisor(supervisor_config(config), reactor)
    supervisor.adapt_config = supervisor_config  # type: ignore[method-assign]
    parent = getattr(options, "parent", None)
    logfile = parent.get("logfile") if parent is not None else None
    logfile = os.path.abspath(logfile) if logfile and logfile != "-" else None
    command = worker_command(
        os.path.abspath(options["config"]), logfile, options.get("pypy-jit")
    )
    supervisor.workers = WorkerSupervisor(
        supervisor.reactor, workers, command, config, config.shutdown_timeout
    )
    supervisor.workers.setServiceParent(supervisor)
    return supervisor
