"""
The health of an upstream's endpoints, as a state machine without I/O.

An L{UpstreamHealth} is fed two kinds of events, each with the time of its
clock: the results of active probes (L{UpstreamHealth.probe_result}: sent by
L{infini_gateway.upstream.health.active.HealthChecker}) and the outcomes of
real requests (L{UpstreamHealth.request_outcome}: reported by the proxy for
every attempt, retries included).  It keeps, per endpoint, an
L{EndpointHealth}, and from it the one flag the balancers read,
L{EndpointState.healthy}: false while the endpoint is actively unhealthy or
ejected.

Active (APISIX's C{checks.active}): an endpoint starts healthy;
C{unhealthy.http_failures} probes in a row answered with a failure status,
C{unhealthy.tcp_failures} that could not connect, or C{unhealthy.timeouts}
that timed out make it unhealthy; C{healthy.successes} successful probes in
a row make it healthy again.  A success resets the failure counters, a
failure the success counter; a status in neither list changes nothing.

Passive (Envoy's outlier detection): C{consecutive_5xx} answers of 500-599
(failures to connect, resets and timeouts count as their 502 or 504),
C{consecutive_gateway_failure} of 502, 503, 504 or failures, or
C{consecutive_timeouts} timeouts eject the endpoint for
C{base_ejection_time} times the number of times it was ejected, at most
C{max_ejection_time}.  It comes back when that time has passed (a timer on
the clock: active checks are not needed), or earlier when active probes
count C{healthy.successes} in a row after the ejection.  No ejection takes
more than C{max_ejection_percent} of the endpoints out at once: the
counters of an endpoint refused ejection start again.

Panic: with C{panic_threshold} above 0, when fewer than that percentage of
the endpoints (of weight above 0) are healthy, L{UpstreamHealth.panicking}
is true and the proxy balances across all of them.

Every change is logged with the endpoint, its counters and the reason.
"""

from typing import Any, Dict, List, Optional

import attrs

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from infini_gateway.config.model import HealthCheck
from infini_gateway.upstream.balancer import EndpointState
from infini_gateway.upstream.failures import AttemptFailure, timed_out
from infini_gateway.upstream.health.report import upstream_state

log = Logger()

# What a probe found.
SUCCESS = "success"
HTTP_FAILURE = "http"
TCP_FAILURE = "tcp"
TIMEOUT = "timeout"
NEUTRAL = "neutral"
PROBE_RESULTS = (SUCCESS, HTTP_FAILURE, TCP_FAILURE, TIMEOUT, NEUTRAL)

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
EJECTED = "ejected"

_GATEWAY_FAILURES = (502, 503, 504)
# An attempt's own timeouts; retry_timeout is the gateway's deadline for all
# attempts, not something the endpoint did.
_TIMEOUT_REASONS = frozenset(timed_out(kind).reason for kind in ("connect", "send", "read"))
_DEADLINE_REASON = timed_out("retry_timeout").reason


@attrs.frozen
class ProbeResult:
    """
    The result of one probe.

    @ivar result: one of L{PROBE_RESULTS}.
    @ivar reason: what happened, for the log and the state:
        C{"status 200"}, C{"connection refused"}, C{"timed out after 1s"}.
    """

    result: str = attrs.field(validator=attrs.validators.in_(PROBE_RESULTS))
    reason: str = ""


class EndpointHealth:
    """
    One endpoint's health: the active status and counters, the passive
    counters and ejection.  Changed only by its L{UpstreamHealth}.

    @ivar endpoint: the L{EndpointState} whose C{healthy} flag this drives.
    """

    def __init__(self, endpoint: EndpointState) -> None:
        self.endpoint = endpoint
        self.active_healthy = True
        self.successes = 0
        self.http_failures = 0
        self.tcp_failures = 0
        self.timeouts = 0
        self.consecutive_5xx = 0
        self.consecutive_gateway_failure = 0
        self.consecutive_timeouts = 0
        self.ejected_until: Optional[float] = None
        self.times_ejected = 0
        self.last_probe: Optional[Dict[str, Any]] = None
        self.last_change: Optional[Dict[str, Any]] = None

    @property
    def ejected(self) -> bool:
        return self.ejected_until is not None

    @property
    def state(self) -> str:
        """C{"ejected"}, else C{"unhealthy"} (by probes), else C{"healthy"}."""
        if self.ejected:
            return EJECTED
        return HEALTHY if self.active_healthy else UNHEALTHY

    @property
    def description(self) -> str:
        """L{state}, saying also when probes find an ejected endpoint unhealthy."""
        if self.ejected and not self.active_healthy:
            return "ejected and unhealthy"
        return self.state

    def counters(self) -> Dict[str, int]:
        return {
            "successes": self.successes,
            "http_failures": self.http_failures,
            "tcp_failures": self.tcp_failures,
            "timeouts": self.timeouts,
            "consecutive_5xx": self.consecutive_5xx,
            "consecutive_gateway_failure": self.consecutive_gateway_failure,
            "consecutive_timeouts": self.consecutive_timeouts,
            "times_ejected": self.times_ejected,
        }

    def _reset_active_failures(self) -> None:
        self.http_failures = self.tcp_failures = self.timeouts = 0

    def _reset_passive(self) -> None:
        self.consecutive_5xx = self.consecutive_gateway_failure = 0
        self.consecutive_timeouts = 0


class UpstreamHealth:
    """
    The health of every endpoint of one upstream.

    @param name: the upstream's name, for the log.
    @param endpoints: its L{EndpointState}s (shared with the balancer).
    @param clock: an C{IReactorTime}; read only when an event comes, so it
        may be C{None} where none will (C{--check}).
    """

    def __init__(
        self,
        name: str,
        endpoints: List[EndpointState],
        clock: Any,
        health_check: HealthCheck = HealthCheck(),
        panic_threshold: float = 0.0,
    ) -> None:
        self.name = name
        self.clock = clock
        self.active = health_check.active
        self.passive = health_check.passive
        self.panic_threshold = panic_threshold
        self.endpoints: List[EndpointHealth] = [EndpointHealth(ep) for ep in endpoints]
        self._by_endpoint: Dict[EndpointState, EndpointHealth] = {
            h.endpoint: h for h in self.endpoints
        }
        self._timers: Dict[EndpointHealth, IDelayedCall] = {}
        self._owner: Any = None
        self._panic = False

    def __getitem__(self, endpoint: EndpointState) -> EndpointHealth:
        return self._by_endpoint[endpoint]

    @property
    def checked(self) -> bool:
        """Whether any health check is configured."""
        return self.active is not None or self.passive is not None

    # Events

    def probe_result(self, endpoint: EndpointState, probe: ProbeResult) -> None:
        """An active probe of C{endpoint} ended with C{probe}."""
        active = self.active
        if active is None:
            return
        health = self._by_endpoint[endpoint]
        health.last_probe = {
            "at": self.clock.seconds(),
            "result": probe.result,
            "reason": probe.reason,
        }
        if probe.result == NEUTRAL:
            return
        before = health.description
        if probe.result == SUCCESS:
            health._reset_active_failures()
            health.successes += 1
            if health.successes < active.healthy.successes or health.state == HEALTHY:
                return
            reason = f"{health.successes} successful probes in a row ({probe.reason})"
            if health.ejected:
                self._cancel_timer(health)
                health.ejected_until = None
                health._reset_passive()
            health.active_healthy = True
        else:
            health.successes = 0
            if probe.result == HTTP_FAILURE:
                health.http_failures += 1
                count, threshold = health.http_failures, active.unhealthy.http_failures
                what = "probes in a row answered with a failure status"
            elif probe.result == TCP_FAILURE:
                health.tcp_failures += 1
                count, threshold = health.tcp_failures, active.unhealthy.tcp_failures
                what = "probes in a row failed to connect"
            else:
                health.timeouts += 1
                count, threshold = health.timeouts, active.unhealthy.timeouts
                what = "probes in a row timed out"
            if not health.active_healthy or count < threshold:
                return
            reason = f"{count} {what} ({probe.reason})"
            health.active_healthy = False
        self._changed(health, before, reason)

    def request_outcome(
        self, endpoint: EndpointState, status: int, timed_out: bool = False
    ) -> None:
        """
        A request to C{endpoint} got C{status}: the upstream's, or the one
        the gateway answers for a failure (502 for a connection error or
        reset, 504 for a timeout, with C{timed_out}).
        """
        passive = self.passive
        if passive is None:
            return
        health = self._by_endpoint[endpoint]
        failed = status >= 500
        health.consecutive_5xx = health.consecutive_5xx + 1 if failed else 0
        gateway = status in _GATEWAY_FAILURES
        health.consecutive_gateway_failure = (
            health.consecutive_gateway_failure + 1 if gateway else 0
        )
        health.consecutive_timeouts = health.consecutive_timeouts + 1 if timed_out else 0
        if health.ejected:
            return
        for count, threshold, what in (
            (health.consecutive_timeouts, passive.consecutive_timeouts, "timeouts"),
            (
                health.consecutive_gateway_failure,
                passive.consecutive_gateway_failure,
                "gateway failures",
            ),
            (health.consecutive_5xx, passive.consecutive_5xx, "5xx"),
        ):
            if threshold and count >= threshold:
                self._eject(health, f"{count} consecutive {what} (last: status {status})")
                return

    def report_failure(self, endpoint: EndpointState, failure: AttemptFailure) -> None:
        """A failed attempt to C{endpoint}, as the proxy classified it."""
        if failure.reason == _DEADLINE_REASON:
            return
        self.request_outcome(
            endpoint, failure.status, timed_out=failure.reason in _TIMEOUT_REASONS
        )

    # Ejection

    def _eject(self, health: EndpointHealth, reason: str) -> None:
        passive = self.passive
        assert passive is not None
        ejected = sum(1 for h in self.endpoints if h.ejected)
        if (ejected + 1) * 100 > passive.max_ejection_percent * len(self.endpoints):
            log.warn(
                "upstream {upstream}: endpoint {endpoint} not ejected ({reason}):"
                " {ejected} of {total} are already, max_ejection_percent is"
                " {percent:g}; {counters}",
                upstream=self.name,
                endpoint=health.endpoint.url,
                reason=reason,
                ejected=ejected,
                total=len(self.endpoints),
                percent=passive.max_ejection_percent,
                counters=_format(health.counters()),
            )
            health._reset_passive()
            return
        before = health.description
        counters = health.counters()
        health.times_ejected += 1
        counters["times_ejected"] = health.times_ejected
        duration = min(
            passive.base_ejection_time * health.times_ejected, passive.max_ejection_time
        )
        health.ejected_until = self.clock.seconds() + duration
        health.successes = 0
        health._reset_passive()
        self._arm(health)
        self._changed(health, before, f"{reason}; ejected for {duration:g}s", counters)

    def _arm(self, health: EndpointHealth) -> None:
        self._cancel_timer(health)
        assert health.ejected_until is not None
        delay = max(0.0, health.ejected_until - self.clock.seconds())
        self._timers[health] = self.clock.callLater(delay, self._expire, health)

    def _cancel_timer(self, health: EndpointHealth) -> None:
        timer = self._timers.pop(health, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _expire(self, health: EndpointHealth) -> None:
        self._timers.pop(health, None)
        try:
            if health.ejected:
                before = health.description
                counters = health.counters()
                health.ejected_until = None
                health._reset_passive()
                self._changed(health, before, "ejection time passed", counters)
        except Exception:
            log.failure("upstream {upstream}: re-admission failed", upstream=self.name)

    def start(self, owner: Any = None) -> None:
        """
        Arm the re-admission timers again (after L{stop}).

        @param owner: the service running them from now on: a reload
            hands a kept upstream from one gateway's service to the next.
        """
        self._owner = owner
        for health in self.endpoints:
            if health.ejected and health not in self._timers:
                self._arm(health)

    def stop(self, owner: Any = None) -> None:
        """
        Cancel the re-admission timers (the gateway stops); not when
        C{owner} is given and another owner has started them since.
        """
        if owner is not None and self._owner is not None and owner is not self._owner:
            return
        for health in list(self._timers):
            self._cancel_timer(health)

    # Reading

    def panicking(self) -> bool:
        """
        Whether to balance across unhealthy endpoints too: fewer than
        C{panic_threshold} percent of the endpoints of weight above 0 are
        healthy.
        """
        panic = False
        if self.panic_threshold > 0:
            usable = [h.endpoint for h in self.endpoints if h.endpoint.weight > 0]
            healthy = sum(1 for ep in usable if ep.healthy)
            panic = bool(usable) and healthy * 100 < self.panic_threshold * len(usable)
            if panic != self._panic:
                self._log_panic(panic, healthy, len(usable))
        self._panic = panic
        return panic

    def _log_panic(self, panic: bool, healthy: int, total: int) -> None:
        if panic:
            text = "below panic_threshold {threshold:g}%: balancing across all of them"
        else:
            text = "panic over (panic_threshold {threshold:g}%)"
        log.warn(
            "upstream {upstream}: {healthy} of {total} endpoints healthy, " + text,
            upstream=self.name,
            healthy=healthy,
            total=total,
            threshold=self.panic_threshold,
        )

    def _changed(
        self,
        health: EndpointHealth,
        before: str,
        reason: str,
        counters: Optional[Dict[str, int]] = None,
    ) -> None:
        """
        Set the endpoint's C{healthy} flag from C{health} and log the change,
        with the counters that decided it (default: as they are now).
        """
        endpoint = health.endpoint
        endpoint.healthy = health.active_healthy and not health.ejected
        after = health.description
        health.last_change = {
            "at": self.clock.seconds(),
            "state": health.state,
            "reason": reason,
        }
        emit = log.info if endpoint.healthy else log.warn
        emit(
            "upstream {upstream}: endpoint {endpoint} {before} -> {after}: {reason};"
            " {counters}",
            upstream=self.name,
            endpoint=endpoint.url,
            before=before,
            after=after,
            reason=reason,
            counters=_format(counters if counters is not None else health.counters()),
            active_healthy=health.active_healthy,
            ejected_until=health.ejected_until,
        )
        self.panicking()

    def state(self, balancer: Any = None) -> Dict[str, Any]:
        """
        Plain data (JSON-serialisable): the upstream's health and, given its
        balancer, each endpoint's in-flight requests and EWMA cost (see
        L{infini_gateway.upstream.health.report}).
        """
        return upstream_state(self, balancer)


def _format(counters: Dict[str, int]) -> str:
    return " ".join(f"{key}={value}" for key, value in counters.items())
