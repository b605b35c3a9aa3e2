"""
The pieces every benchmark here shares: processes started and always
stopped, /proc sampling (RSS, CPU, the machine's load), an nginx started
from a config in a temporary directory, and wrk run and parsed.

Standard library only, and importing it does nothing.
"""

import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024**2


class Missing(Exception):
    """A tool the benchmark needs is not installed."""


class TargetFailed(Exception):
    """A target did not start or did not answer as expected."""


def say(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def find_tool(name):
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def read(path, default=""):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def loadavg():
    return " ".join(read("/proc/loadavg").split()[:3])


def run_text(cmd, **kwargs):
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kwargs)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"({e})"
    return (done.stdout + done.stderr).strip()


def interpreter_info(python, env):
    code = (
        "import json, platform, sys\n"
        "info = {'implementation': platform.python_implementation(),"
        " 'python': platform.python_version()}\n"
        "if hasattr(sys, 'pypy_version_info'):\n"
        "    info['pypy'] = '.'.join(map(str, sys.pypy_version_info[:3]))\n"
        "for name in ('twisted', 'treq'):\n"
        "    try:\n"
        "        info[name] = __import__(name).__version__\n"
        "    except Exception as e:\n"
        "        info[name] = None\n"
        "print(json.dumps(info))\n"
    )
    out = run_text([python, "-c", code], env=env)
    try:
        return json.loads(out.splitlines()[-1])
    except (ValueError, IndexError):
        raise Missing(f"{python} cannot run: {out}") from None


def describe_interpreter(info):
    if info["implementation"] == "PyPy":
        name = f"PyPy {info.get('pypy')} (Python {info['python']})"
    else:
        name = f"{info['implementation']} {info['python']}"
    return f"{name}, Twisted {info['twisted']}, treq {info['treq']}"


def short_interpreter(info):
    return "PyPy" if info["implementation"] == "PyPy" else "CPython"


def machine(tools):
    cpu = re.search(r"^model name\s*:\s*(.*)$", read("/proc/cpuinfo"), re.MULTILINE)
    mem = re.search(r"^MemTotal:\s*(\d+)", read("/proc/meminfo"), re.MULTILINE)
    return {
        "cpu": cpu.group(1).strip() if cpu else platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "memory": f"{int(mem.group(1)) / 1024**2:.0f} GiB" if mem else "unknown",
        "kernel": f"{platform.system()} {platform.release()}",
        "nginx": run_text([tools["nginx"], "-v"]).replace("nginx version: nginx/", ""),
        "wrk": run_text([tools["wrk"], "-v"]).split(" [")[0].replace("wrk ", ""),
    }


# --- /proc ----------------------------------------------------------------


def children(pid):
    """Direct children of pid (nginx's workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read(f"/proc/{entry}/stat")
            if stat and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def status_kib(pid, key):
    match = re.search(rf"^{key}:\s*(\d+)\s*kB", read(f"/proc/{pid}/status"), re.MULTILINE)
    return int(match.group(1)) if match else 0


def cpu_ticks(pid):
    stat = read(f"/proc/{pid}/stat")
    if not stat:
        return 0
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def machine_ticks():
    """(busy, total) jiffies of all cores."""
    fields = [int(x) for x in read("/proc/stat").splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return total - idle, total


def busy_percent(seconds=1.0, ours=()):
    """Percent of one core used by processes other than ours over seconds."""
    b0, _ = machine_ticks()
    o0 = sum(cpu_ticks(p) for p in ours)
    time.sleep(seconds)
    b1, _ = machine_ticks()
    o1 = sum(cpu_ticks(p) for p in ours)
    return max(0.0, 100.0 * ((b1 - b0) - (o1 - o0)) / TICKS / seconds)


def wait_for_load(threshold, max_wait):
    deadline = time.monotonic() + max_wait
    while True:
        one = float(read("/proc/loadavg").split()[0])
        if one < threshold:
            return
        if time.monotonic() >= deadline:
            say(f"load average still {loadavg()} after {max_wait}s: going on, noted in the report")
            return
        say(f"load average {loadavg()}: waiting for < {threshold}")
        time.sleep(10)


def wait_for_quiet(threshold, max_wait, ours):
    deadline = time.monotonic() + max_wait
    while True:
        busy = busy_percent(1.0, ours)
        if busy < threshold or time.monotonic() >= deadline:
            return busy
        say(f"other processes use {busy:.0f}% of a core: waiting")
        time.sleep(4)


class RssSampler(threading.Thread):
    """Samples the summed VmRSS of a set of processes every interval."""

    def __init__(self, pids, interval=0.05):
        super().__init__(daemon=True)
        self.pids = list(pids)
        self.interval = interval
        self.peak = 0
        self._halt = threading.Event()

    def sample(self):
        return sum(status_kib(p, "VmRSS") for p in self.pids) * 1024

    def run(self):
        while not self._halt.is_set():
            self.peak = max(self.peak, self.sample())
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join()
        self.peak = max(self.peak, self.sample())
        return self.peak


# --- processes ------------------------------------------------------------


_STARTED = []


class Process:
    """
    One process we started, in its own session, logging to a file; every
    one is stopped when the harness ends (L{stop_all}).
    """

    def __init__(self, name, cmd, directory, env=None, cwd=None):
        self.name = name
        self.log_path = Path(directory) / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd or directory,
            env=env,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        _STARTED.append(self)

    def pids(self):
        """The process and its children (nginx's master and workers)."""
        return [self.pid] + children(self.pid)

    def log_tail(self, lines=30):
        return "\n".join(read(self.log_path).splitlines()[-lines:])

    def alive(self):
        return self.popen.poll() is None

    def stop(self):
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                pass
        # Anything left of its session (its own children) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        self._log.close()


def stop_all():
    while _STARTED:
        _STARTED.pop().stop()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def wait_http(process, url, timeout=30.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if not process.alive():
            raise TargetFailed(
                f"{process.name} exited {process.popen.returncode}:\n{process.log_tail()}"
            )
        try:
            return http_get(url)
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (OSError, urllib.error.URLError) as e:
            last = e
        time.sleep(0.1)
    raise TargetFailed(f"{process.name} did not answer {url} in {timeout}s ({last})")


# --- nginx ----------------------------------------------------------------

NGINX_MAIN = """\
daemon off;
master_process on;
worker_processes {workers};
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/{name}-client-body;
    proxy_temp_path {tmp}/{name}-proxy;
    fastcgi_temp_path {tmp}/{name}-fastcgi;
    uwsgi_temp_path {tmp}/{name}-uwsgi;
    scgi_temp_path {tmp}/{name}-scgi;
{http}
}}
"""

BACKEND_SERVER = """\
    server {{
        listen 127.0.0.1:{port};
        location = /large {{ alias {tmp}/www/large.bin; }}
        location / {{ return 200 "{body}"; }}
    }}
"""


def start_nginx(tools, tmp, name, workers, http):
    conf = Path(tmp) / f"{name}.conf"
    conf.write_text(NGINX_MAIN.format(workers=workers, tmp=tmp, name=name, http=http))
    return Process(
        name,
        [tools["nginx"], "-p", str(tmp), "-e", f"{tmp}/{name}-error.log", "-c", str(conf)],
        tmp,
    )


# --- wrk ------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text):
    match = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    return float(match.group(1)) * _UNITS[match.group(2)] if match else None


def parse_wrk(out):
    result = {"rps": None, "p50": None, "p99": None, "non2xx": 0, "socket": 0, "requests": 0}
    match = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if match:
        result["rps"] = float(match.group(1))
    for pct, key in (("50", "p50"), ("99", "p99")):
        match = re.search(rf"^\s*{pct}(?:\.000)?%\s+(\S+)", out, re.MULTILINE)
        if match:
            result[key] = _ms(match.group(1))
    match = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    if match:
        result["non2xx"] = int(match.group(1))
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if match:
        result["socket"] = sum(int(x) for x in match.groups())
        result["socket_detail"] = match.group(0)
    match = re.search(r"(\d+) requests in", out)
    if match:
        result["requests"] = int(match.group(1))
    return result


def wrk_command(tools, args, url, duration, connections=None):
    return [
        tools["wrk"],
        f"-t{args.threads}",
        f"-c{connections or args.connections}",
        f"-d{duration}s",
        "--latency",
        url,
    ]


def measure(
    tools, args, name, interpreter, url, target_pids, backend_pids, warmup, connections=None
):
    """
    Check one answer, warm up, then C{args.runs} measured wrk runs; the one
    kept is the least disturbed by other processes (the lowest other CPU,
    then the highest req/s).  Returns req/s, latency, errors, RSS and CPU.
    C{connections} is wrk's -c when not C{args.connections}.
    """
    connections = connections or args.connections
    try:
        status, body = http_get(url)
    except OSError as e:  # urllib's errors, an HTTP error status too
        raise TargetFailed(f"{name}: GET {url}: {e}") from None
    if status != 200 or len(body) != args.body_size:
        raise TargetFailed(f"{name}: GET {url} gave {status} with {len(body)} bytes")
    if warmup > 0:
        say(f"{name} ({interpreter}): warm-up {warmup}s with -c{connections}")
        try:
            subprocess.run(
                wrk_command(tools, args, url, warmup, connections),
                capture_output=True,
                timeout=warmup + 60,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise TargetFailed(f"{name}: the warm-up ran {warmup + 60}s and was stopped") from None
    results = [
        _measured_run(tools, args, name, interpreter, url, target_pids, backend_pids, connections)
        for _ in range(max(1, getattr(args, "runs", 1)))
    ]
    result = min(results, key=lambda r: (round(r["other_cpu"] / 5), -r["rps"]))
    result["runs"] = [round(r["rps"]) for r in results]
    return result


def _measured_run(tools, args, name, interpreter, url, target_pids, backend_pids, connections):
    ours = list(target_pids) + list(backend_pids)
    busy = wait_for_quiet(args.busy_threshold, min(args.max_wait, 60), ours)
    load = loadavg()
    say(
        f"{name} ({interpreter}): {args.duration}s with -c{connections}"
        f" (load {load}, others {busy:.0f}% of a core)"
    )
    sampler = RssSampler(target_pids)
    t0 = {p: cpu_ticks(p) for p in ours}
    m0 = machine_ticks()[0]
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic()
    sampler.start()
    try:
        done = subprocess.run(
            wrk_command(tools, args, url, args.duration, connections),
            capture_output=True,
            text=True,
            timeout=args.duration + 60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise TargetFailed(f"{name}: wrk ran {args.duration + 60}s and was stopped") from None
    finally:
        peak = sampler.stop()
    elapsed = time.monotonic() - start
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s1 = resource.getrusage(resource.RUSAGE_SELF)
    m1 = machine_ticks()[0]
    used = {p: cpu_ticks(p) - t0.get(p, 0) for p in ours}
    target_cpu = sum(used.get(p, 0) for p in target_pids) / TICKS
    backend_cpu = sum(used.get(p, 0) for p in backend_pids) / TICKS
    wrk_cpu = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
    self_cpu = (s1.ru_utime + s1.ru_stime) - (s0.ru_utime + s0.ru_stime)
    other_cpu = (m1 - m0) / TICKS - target_cpu - backend_cpu - wrk_cpu - self_cpu
    result = parse_wrk(done.stdout)
    if result["rps"] is None:
        raise TargetFailed(f"{name}: wrk said:\n{done.stdout}\n{done.stderr}")
    # VmHWM: each process's peak RSS over its life, this run included.
    hwm_by_pid = [status_kib(p, "VmHWM") * 1024 for p in target_pids]
    result.update(
        target=name,
        interpreter=interpreter,
        connections=connections,
        peak_rss=max(peak, sum(hwm_by_pid)),
        hwm_by_pid=hwm_by_pid,
        cpu=100.0 * target_cpu / elapsed,
        backend_cpu=100.0 * backend_cpu / elapsed,
        wrk_cpu=100.0 * wrk_cpu / elapsed,
        other_cpu=max(0.0, 100.0 * other_cpu / elapsed),
        load=load,
        busy_before=busy,
    )
    say(
        f"{name} ({interpreter}): {result['rps']:.0f} req/s, p50 {result['p50']} ms,"
        f" p99 {result['p99']} ms, CPU {result['cpu']:.0f}%"
    )
    return result
