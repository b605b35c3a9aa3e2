"""
Proxy throughput: the gateway, a bare treq proxy, a bare aiohttp proxy and
nginx as a reverse proxy, each in front of the same nginx backend on
loopback, measured with wrk in one run; the gateway's figures are given as
ratios to the others', and checked against the performance targets.

    python benchmarks/proxy.py                      # print a markdown report
    python benchmarks/proxy.py --output benchmarks/RESULTS.md
    python benchmarks/proxy.py --large              # also 1 GiB down and up

It needs wrk and nginx (Debian: apt-get install -y wrk nginx), curl for
--large, and runs PyPy targets when a PyPy venv with the project's
dependencies exists (--pypy).  The one thing it installs is aiohttp, with
pip, in a venv of its own for the bare aiohttp proxy (--aiohttp-venv).
Every process it starts is stopped and its temporary directory removed when
it ends, on Ctrl-C or an error too.  See benchmarks/README.rst.
"""

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _harness import (
    BACKEND_SERVER,
    MIB,
    Missing,
    Process,
    RssSampler,
    TargetFailed,
    describe_interpreter,
    find_tool,
    free_port,
    interpreter_info,
    loadavg,
    machine,
    measure,
    read,
    run_text,
    say,
    short_interpreter,
    start_nginx,
    stop_all,
    wait_for_load,
    wait_http,
    wrk_command,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_PYPY = "/tmp/bench-pypy-venv/bin/python"
DEFAULT_AIOHTTP_VENV = "/tmp/bench-aiohttp-venv"
PATH = "/api/v1/items/42"
TARGETS = (
    "nginx-direct",
    "nginx-proxy-1w",
    "nginx-proxy-2w",
    "bare-treq",
    "bare-aiohttp",
    "gateway-minimal",
    "gateway-full",
    "gateway-full-2w",
)
REFERENCE = "nginx-proxy-1w"
SECTION = "## Proxy throughput"
GIB = 1024**3


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python benchmarks/proxy.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="CPython interpreter of a venv with the project's dependencies (and twistd)",
    )
    parser.add_argument(
        "--pypy",
        default=DEFAULT_PYPY,
        help="PyPy interpreter of a venv with the project's dependencies; '' for none",
    )
    parser.add_argument(
        "--aiohttp-venv",
        default=DEFAULT_AIOHTTP_VENV,
        help="venv of the bare aiohttp proxy, made from --python's interpreter and given"
        " aiohttp with pip when it lacks it; '' for none",
    )
    parser.add_argument(
        "--aiohttp-python",
        default="",
        help="a CPython interpreter that has aiohttp, used as it is instead of --aiohttp-venv",
    )
    parser.add_argument(
        "--installed",
        action="store_true",
        help="run the project as installed in each venv, not this checkout's code",
    )
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help="comma-separated targets to measure, out of: " + ", ".join(TARGETS),
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk -t")
    parser.add_argument("--connections", type=int, default=50, help="wrk -c")
    parser.add_argument("--duration", type=int, default=10, help="wrk -d, seconds")
    parser.add_argument(
        "--latency-connections",
        type=int,
        default=10,
        help="wrk -c of the extra run of gateway-full on CPython that gives its p99; 0 for none",
    )
    parser.add_argument(
        "--memory-connections",
        type=int,
        default=200,
        help="wrk -c of the extra run of gateway-full on CPython that gives its peak RSS;"
        " 0 for none",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="measured runs per target; the report keeps the one least disturbed by other"
        " processes (and lists the req/s of all)",
    )
    parser.add_argument("--warmup", type=int, default=3, help="warm-up before each target, seconds")
    parser.add_argument(
        "--pypy-warmup", type=int, default=30, help="warm-up for PyPy targets (the JIT), seconds"
    )
    parser.add_argument("--body-size", type=int, default=1024, help="backend body, bytes")
    parser.add_argument("--path", default=PATH, help="request path")
    parser.add_argument(
        "--load-threshold",
        type=float,
        default=0.5,
        help="wait for the 1-minute load average to fall below this before starting",
    )
    parser.add_argument(
        "--busy-threshold",
        type=float,
        default=15.0,
        help="before each target, wait while other processes use more than this"
        " percent of one core",
    )
    parser.add_argument(
        "--max-wait", type=int, default=300, help="longest wait for a quiet machine, seconds"
    )
    parser.add_argument(
        "--large",
        action="store_true",
        help="also stream 1 GiB down and 1 GiB up through each proxy",
    )
    parser.add_argument("--large-size", type=int, default=GIB, help="bytes of the --large runs")
    parser.add_argument(
        "--large-timeout", type=int, default=300, help="longest --large transfer, seconds"
    )
    parser.add_argument(
        "--output", help="append the markdown report to this file (default: print it)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (configs, logs)"
    )
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown targets: {', '.join(unknown)}")
    return args


# --- tools and machine ----------------------------------------------------


def check_tools(args):
    tools = {"wrk": find_tool("wrk"), "nginx": find_tool("nginx")}
    if args.large:
        tools["curl"] = find_tool("curl")
    missing = sorted(name for name, path in tools.items() if not path)
    if missing:
        raise Missing(
            "missing: "
            + ", ".join(missing)
            + " (Debian: apt-get install -y "
            + " ".join(missing)
            + "); this harness installs nothing"
        )
    for label, python in (("--python", args.python), ("--pypy", args.pypy)):
        if python and not os.access(python, os.X_OK):
            if label == "--pypy" and python == DEFAULT_PYPY:
                say(
                    f"no PyPy venv at {python}: PyPy targets skipped (create one with"
                    " `pypy3 -m venv /tmp/bench-pypy-venv && /tmp/bench-pypy-venv/bin/pip"
                    " install --only-binary cryptography,cffi .`)"
                )
                args.pypy = ""
            else:
                raise Missing(f"{label} {python}: not an executable interpreter")
    return tools


PROXY_HTTP = """\
    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""


# --- the gateway ----------------------------------------------------------


def gateway_env(args, tmp):
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    if not args.installed:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    # twisted.web spools large request bodies to temporary files: keep them in tmp.
    env["TMPDIR"] = str(tmp)
    return env


def gateway_features(python, env):
    """What the gateway in this interpreter supports, from its config schema."""
    code = (
        "import json\n"
        "from infini_gateway.config.schema import build_schema\n"
        "print(json.dumps(build_schema()))\n"
    )
    out = run_text([python, "-c", code], env=env)
    try:
        schema = json.loads(out.splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": out[-2000:]}
    props = schema.get("properties", {})
    flow_filter = props.get("flow", {}).get("items", {}).get("properties", {}).get("filter", {})
    filters = sorted(flow_filter.get("items", {}).get("properties", {}))
    upstream = props.get("upstream", {}).get("items", {}).get("properties", {})
    return {
        "filters": filters,
        "upstream": sorted(upstream) if "upstream" in props else None,
        "upstream_schema": upstream,
        "proxy": "proxy" in filters and "upstream" in props,
    }


def twistd_command(python):
    twistd = Path(python).parent / "twistd"
    if twistd.exists():
        return [str(twistd)]
    return [python, "-c", "from twisted.scripts.twistd import run; run()"]


def write_json_yaml(path, document):
    """JSON is YAML: the harness needs no YAML library of its own."""
    Path(path).write_text(json.dumps(document, indent=2) + "\n")


def gateway_config(variant, features, tmp, backends, sink=None, path=PATH):
    """
    A gateway.yml for one variant, and the notes of what it leaves out.

    minimal: one rule (the one requested), one filter (proxy), one endpoint.
    full: 100 rules (the one requested last), set_request_header then proxy,
    two endpoints balanced round robin, and health checks and an access log
    (the logging filter in the router's tracing flow) when the gateway has them.
    large: minimal, plus POST/PUT /upload proxied to the discarding backend.
    """
    notes = []
    upstream_keys = features["upstream"] or []
    rule_pattern = re.sub(r"/\d+$", "/{id}", path)
    flows = [{"name": "proxy", "filter": [{"proxy": {"upstream": "backend"}}]}]
    upstreams = [{"name": "backend", "endpoints": [f"http://127.0.0.1:{backends[0]}"]}]
    router = {
        "name": "bench",
        "rules": [{"method": ["GET"], "pattern": [rule_pattern], "flow": ["proxy"]}],
    }
    if "keepalive_pool" in upstream_keys:
        # nginx's reference keeps 64 idle connections to the backend.
        for upstream in upstreams:
            upstream["keepalive_pool"] = {"size": 64, "idle_timeout": "60s"}
    if variant == "large":
        upstreams.append(dict(upstreams[0], name="sink", endpoints=[f"http://127.0.0.1:{sink}"]))
        flows.append({"name": "upload", "filter": [{"proxy": {"upstream": "sink"}}]})
        router["rules"] = [
            {"method": ["POST", "PUT"], "pattern": ["/upload"], "flow": ["upload"]},
            {"method": ["GET"], "pattern": ["/large"], "flow": ["proxy"]},
        ]
    elif variant == "full":
        other = []
        for i in range(99):
            shape = i % 3
            if shape == 0:
                other.append(f"/svc{i}/items/{{id}}")
            elif shape == 1:
                other.append(f"/svc{i}/users/{{user}}/orders/{{order:[0-9]+}}")
            else:
                other.append(f"/static{i}/{{path:*}}")
        rules = [{"method": ["GET", "POST"], "pattern": [p], "flow": ["not_found"]} for p in other]
        rules.append({"method": ["GET"], "pattern": [rule_pattern], "flow": ["full"]})
        router["rules"] = rules
        flows.append(
            {
                "name": "not_found",
                "filter": [{"set_response": {"status": 404, "body": "no\n"}}],
            }
        )
        flows.append(
            {
                "name": "full",
                "filter": [
                    {"set_request_header": {"headers": ["X-Bench -> full", "X-Env -> bench"]}},
                    {"proxy": {"upstream": "backend2"}},
                ],
            }
        )
        backend2 = {
            "name": "backend2",
            "endpoints": [f"http://127.0.0.1:{port}" for port in backends[:2]],
        }
        if "keepalive_pool" in upstream_keys:
            backend2["keepalive_pool"] = {"size": 32, "idle_timeout": "60s"}
        if "balancer" in upstream_keys:
            backend2["balancer"] = "roundrobin"
        else:
            notes.append("no upstream balancer key: the default balancer")
        health = health_check(features)
        if health:
            backend2["health_check"] = health
        else:
            notes.append("no health checks (not in the gateway yet)")
        upstreams.append(backend2)
        if "logging" in features["filters"]:
            flows.append(
                {
                    "name": "access_log",
                    "filter": [{"logging": {"path": f"{tmp}/gateway-access.log"}}],
                }
            )
            router["tracing_flow"] = "access_log"
        else:
            notes.append("no access log (no logging filter yet)")
    config = {
        "path": {"data": f"{tmp}/gateway-data", "logs": f"{tmp}/gateway-logs"},
        "entry": [{"name": "bench", "router": "bench", "network": {"binding": "127.0.0.1:0"}}],
        "router": [router],
        "flow": flows,
        "upstream": upstreams,
    }
    if variant == "large":
        # The 1 GiB upload is over the entry's default body limit (200mb).
        config["entry"][0]["max_request_body_size"] = "2gb"
    return config, notes


def health_check(features):
    """Active health checks of the backends, in the keys the gateway's schema has."""
    schema = features["upstream_schema"].get("health_check")
    if not schema:
        return None
    active = schema.get("properties", {}).get("active", {}).get("properties", {})
    if not active:
        return None
    check = {}
    for key, value in (("type", "http"), ("http_path", "/health"), ("timeout", "1s")):
        if key in active:
            check[key] = value
    if "interval" in active.get("healthy", {}).get("properties", {}):
        check["healthy"] = {"interval": "1s"}
    return {"active": check}


LISTENING = re.compile(r"entry (\S+) listening on (https?)://(\S+)")


def start_gateway(args, tmp, python, label, config, extra=()):
    config_path = Path(tmp) / f"{label}.yml"
    write_json_yaml(config_path, config)
    env = gateway_env(args, tmp)
    cmd = twistd_command(python) + [
        "-n",
        "--pidfile=",
        "infini-gateway",
        "--config",
        str(config_path),
        *extra,
    ]
    process = Process(label, cmd, tmp, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = LISTENING.search(read(process.log_path))
        if match:
            return process, f"http://{match.group(3)}"
        if not process.alive():
            break
        time.sleep(0.1)
    process.stop()
    raise TargetFailed(f"{label} did not start:\n{process.log_tail()}")


def start_bare_treq(args, tmp, python, label, backend):
    port = free_port()
    env = gateway_env(args, tmp)
    process = Process(
        label,
        [
            python,
            str(HERE / "bare_treq_proxy.py"),
            "--port",
            str(port),
            "--upstream",
            f"http://127.0.0.1:{backend}",
        ],
        tmp,
        env=env,
    )
    return process, f"http://127.0.0.1:{port}"


# --- the bare aiohttp proxy -----------------------------------------------

AIOHTTP_INFO = (
    "import json, platform, aiohttp\n"
    "print(json.dumps({'implementation': platform.python_implementation(),"
    " 'python': platform.python_version(), 'aiohttp': aiohttp.__version__}))\n"
)


def plain_env():
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    return env


def run_step(cmd, timeout):
    """Run one setup command: (True, output) when it exits 0."""
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=plain_env(), check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    return done.returncode == 0, (done.stdout + done.stderr).strip()


def aiohttp_info(python):
    """What python is and its aiohttp's version, or None when it has no aiohttp."""
    ok, out = run_step([python, "-c", AIOHTTP_INFO], 60)
    if not ok:
        return None
    try:
        return json.loads(out.splitlines()[-1])
    except (ValueError, IndexError):
        return None


def aiohttp_interpreter(args):
    """
    The interpreter the bare aiohttp proxy runs under: (python, info), or
    (None, why not).  --aiohttp-python is used as it is; else the venv
    --aiohttp-venv, made from --python's interpreter when it does not exist,
    and given aiohttp with pip when it lacks it.
    """
    if args.aiohttp_python:
        info = aiohttp_info(args.aiohttp_python)
        if info is None:
            return None, f"`{args.aiohttp_python}` (--aiohttp-python) cannot import aiohttp"
        return args.aiohttp_python, info
    if not args.aiohttp_venv:
        return None, "no interpreter for it (--aiohttp-venv '')"
    venv = Path(args.aiohttp_venv)
    python = str(venv / "bin" / "python")
    if not os.access(python, os.X_OK):
        say(f"bare-aiohttp: making the venv {venv} from {args.python}")
        ok, out = run_step([args.python, "-m", "venv", str(venv)], 300)
        if not ok:
            return None, f"no venv made at {venv}: {last_line(out)}"
    info = aiohttp_info(python)
    if info is None:
        say(f"bare-aiohttp: pip install aiohttp into {venv}")
        ok, out = run_step(
            [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "aiohttp"],
            600,
        )
        info = aiohttp_info(python)
        if info is None:
            return None, f"aiohttp could not be installed in {venv}: {last_line(out)}"
    return python, info


def start_bare_aiohttp(tmp, python, label, backend):
    port = free_port()
    process = Process(
        label,
        [
            python,
            str(HERE / "bare_aiohttp_proxy.py"),
            "--port",
            str(port),
            "--upstream",
            f"http://127.0.0.1:{backend}",
        ],
        tmp,
        env=plain_env(),
    )
    return process, f"http://127.0.0.1:{port}"


# --- large transfers ------------------------------------------------------


def curl_transfer(tools, args, url, upload, pids, tmp):
    """One curl transfer of args.large_size while sampling pids' RSS."""
    sampler = RssSampler(pids, interval=0.02)
    idle = sampler.sample()
    out = Path(tmp) / "curl-body"
    cmd = [
        tools["curl"],
        "-sS",
        "-o",
        str(out) if upload else "/dev/null",
        "-w",
        "%{http_code} %{size_download} %{size_upload} %{time_total}",
        "--max-time",
        str(args.large_timeout),
    ]
    if upload:
        cmd += ["-X", "POST", "-T", str(Path(tmp) / "www" / "large.bin")]
    cmd.append(url)
    sampler.start()
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=args.large_timeout + 30, check=False
    )
    peak = sampler.stop()
    fields = done.stdout.split()
    result = {"idle": idle, "peak": peak, "error": done.stderr.strip()}
    if len(fields) == 4:
        code, down, up, total = fields
        moved = int(float(up if upload else down))
        result.update(
            status=int(code), bytes=moved, seconds=float(total), rate=moved / float(total) / MIB
        )
        if upload:
            with contextlib.suppress(ValueError, OSError):
                result["received"] = json.loads(read(out)).get("received")
    return result


def run_large(tools, args, tmp, interpreters, backend_port, sink_port):
    rows = []
    notes = [
        "Uploads: twisted.web reads a request body whole before any resource sees it"
        " (in memory up to 100 KB, then in a temporary file), so an upload is stored, then"
        " forwarded: RSS stays flat, the disk holds the body meanwhile, and the backend gets"
        " its first byte only once the client has sent its last.",
        "bare-treq answers with `treq.collect` and `request.write`, which push bytes to the"
        " client without waiting for it: its RSS grows with the download.",
    ]
    for info, python in interpreters:
        interp = short_interpreter(info)
        kinds = []
        features = gateway_features(python, gateway_env(args, tmp))
        if features.get("proxy"):
            kinds.append("gateway")
        else:
            notes.append(f"gateway ({interp}): no proxy filter yet: not measured")
        kinds.append("bare-treq")
        for kind in kinds:
            label = f"large-{kind}-{interp.lower()}"
            if kind == "gateway":
                config, _ = gateway_config("large", features, tmp, [backend_port], sink_port)
                try:
                    process, url = start_gateway(args, tmp, python, label, config)
                except TargetFailed as e:
                    say(str(e))
                    notes.append(f"gateway ({interp}) did not start: {last_line(e)}")
                    continue
                uploads_to = url
            else:
                process, url = start_bare_treq(args, tmp, python, label, backend_port)
                uploads_to = None
                sink_proxy, sink_url = start_bare_treq(
                    args, tmp, python, label + "-sink", sink_port
                )
            try:
                wait_http(process, url + "/large-ready-check")
                for upload in (False, True):
                    what = "upload" if upload else "download"
                    if upload and kind == "bare-treq":
                        target_url = sink_url + "/upload"
                        pids = sink_proxy.pids()
                        wait_http(sink_proxy, sink_url + "/ready")
                    else:
                        target_url = (uploads_to or url) + ("/upload" if upload else "/large")
                        pids = process.pids()
                    say(f"{kind} ({interp}): {size_text(args.large_size)} {what}")
                    result = curl_transfer(tools, args, target_url, upload, pids, tmp)
                    result.update(target=kind, interpreter=interp, direction=what)
                    rows.append(result)
                    say(
                        f"{kind} ({interp}) {what}: status {result.get('status')},"
                        f" {result.get('rate', 0):.0f} MiB/s,"
                        f" RSS +{(result['peak'] - result['idle']) / MIB:.1f} MiB"
                    )
            except TargetFailed as e:
                say(str(e))
                notes.append(f"{kind} ({interp}) failed: {last_line(e)}")
            finally:
                process.stop()
                if kind == "bare-treq":
                    sink_proxy.stop()
    return rows, notes


# --- report ---------------------------------------------------------------


def last_line(error):
    """The line of a failure that says what went wrong (a traceback's last)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else repr(error)


def rps_text(row):
    runs = row.get("runs") or []
    if len(runs) < 2:
        return f"{row['rps']:.0f}"
    return f"{row['rps']:.0f} ({', '.join(str(r) for r in runs)})"


def size_text(size):
    return f"{size / GIB:g} GiB" if size >= GIB else f"{size / MIB:g} MiB"


def table_row(*cells):
    return "| " + " | ".join(str(c) for c in cells) + " |"


def fmt_ms(value):
    return "n/a" if value is None else (f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms")


def fmt_errors(row):
    total = row["non2xx"] + row["socket"]
    if not total:
        return "0"
    parts = []
    if row["non2xx"]:
        parts.append(f"{row['non2xx']} non-2xx")
    if row["socket"]:
        parts.append(row.get("socket_detail", f"{row['socket']} socket"))
    return f"{total} ({'; '.join(parts)})"


def rss_text(row):
    """Peak RSS; a supervisor's and its workers' each too."""
    text = f"{row['peak_rss'] / MIB:.1f} MiB"
    hwm = row.get("hwm_by_pid") or []
    if row["target"].startswith("gateway") and len(hwm) > 1:
        workers = ", ".join(f"{h / MIB:.1f}" for h in hwm[1:])
        text += f" (supervisor {hwm[0] / MIB:.1f}; workers {workers})"
    return text


def report(
    args,
    tools,
    info,
    aiohttp,
    started,
    load_start,
    rows,
    notes,
    large_rows,
    large_notes,
    failures,
):
    m = machine(tools)
    main_rows = [r for r in rows if r["connections"] == args.connections]
    ref = next((r for r in main_rows if r["target"] == REFERENCE), None)
    lines = [
        f"### {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, {m['kernel']}",
    ]
    for interp, python in info:
        lines.append(f"- {short_interpreter(interp)}: {describe_interpreter(interp)} (`{python}`)")
    if aiohttp:
        found, python = aiohttp
        lines.append(
            f"- bare-aiohttp: {found['implementation']} {found['python']},"
            f" aiohttp {found['aiohttp']} (`{python}`)"
        )
    command = wrk_command({"wrk": "wrk"}, args, "http://127.0.0.1:PORT" + args.path, args.duration)
    lines += [
        f"- nginx {m['nginx']}, wrk {m['wrk']}",
        f"- Load average before the run: {load_start}",
        f"- Command: `{' '.join(command)}`, after a warm-up of {args.warmup}s"
        f" ({args.pypy_warmup}s for PyPy) with the same options",
    ]
    extra = extra_connections(args)
    if extra and "gateway-full" in args.targets:
        lines.append(
            "- Also `gateway-full` on CPython, in the same process right after: the same"
            " command with "
            + " and ".join(f"`-c{c}`" for c in extra)
            + f", each after a warm-up of {args.warmup}s with the same options"
        )
    lines += [
        f"- Backend: nginx, 1 worker, {args.body_size}-byte body (`return 200`), on 127.0.0.1;"
        " wrk, the target and the backend share the machine's cores",
        f"- Ratio: req/s over `{REFERENCE}` (nginx as a reverse proxy, 1 worker, keepalive 64"
        " to the backend) measured in the same run; and over `bare-treq` on the same interpreter",
        "",
        table_row(
            "target",
            "interpreter",
            "req/s",
            "p50",
            "p99",
            "errors",
            "peak RSS",
            "target CPU",
            "ratio to nginx proxy",
            "ratio to bare treq",
            "load (1/5/15 min)",
            "other CPU",
        ),
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    bare = {r["interpreter"]: r for r in main_rows if r["target"] == "bare-treq"}
    for row in rows:
        same = bare.get(row["interpreter"])
        if row["connections"] == args.connections:
            target = row["target"]
            to_ref = f"{row['rps'] / ref['rps']:.2f}" if ref and ref["rps"] else "n/a"
            to_bare = f"{row['rps'] / same['rps']:.2f}" if same and same["rps"] else "-"
        else:
            # Another wrk -c: its req/s compare with nothing else.
            target, to_ref, to_bare = f"{row['target']} (-c{row['connections']})", "-", "-"
        lines.append(
            table_row(
                target,
                row["interpreter"],
                rps_text(row),
                fmt_ms(row["p50"]),
                fmt_ms(row["p99"]),
                fmt_errors(row),
                rss_text(row),
                f"{row['cpu']:.0f}%",
                to_ref,
                to_bare,
                row["load"],
                f"{row['other_cpu']:.0f}%",
            )
        )
    lines += [
        "",
        "Targets: `nginx-direct` is wrk straight to the backend (no proxy);"
        " `nginx-proxy-1w` / `-2w` nginx as a reverse proxy with 1 / 2 workers;"
        " `bare-treq` is `benchmarks/bare_treq_proxy.py`; `bare-aiohttp` is"
        " `benchmarks/bare_aiohttp_proxy.py` (aiohttp.web and one `ClientSession`, on"
        " CPython); `gateway-minimal` is one rule and the"
        " proxy filter to one endpoint; `gateway-full` 100 rules (the one matched last),"
        " `set_request_header` then proxy, two endpoints balanced by smooth weighted round"
        " robin, an access log (the `logging` filter as tracing flow) and active health checks"
        " where the gateway has them (see below); `gateway-full-2w` the same with"
        " `--workers 2`; `(-cN)` rows are extra runs of the same process with wrk's `-cN`."
        " Peak RSS is VmHWM, the peak over the process's life (nginx's master and workers"
        " summed; the gateway with workers: summed, then the supervisor's and each worker's);"
        " target CPU is in percent of one core; other CPU is what processes outside the"
        " benchmark used meanwhile (percent of one core): more than a few percent means the"
        " figures are low.",
    ]
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    if large_rows or large_notes:
        lines += [
            "",
            f"Large transfers ({size_text(args.large_size)} with curl; RSS growth is the peak"
            " sampled every 20 ms during the transfer minus the RSS just before it):",
            "",
            table_row(
                "target",
                "interpreter",
                "direction",
                "status",
                "MiB/s",
                "seconds",
                "RSS before",
                "RSS growth",
            ),
            "|---|---|---|---|---:|---:|---:|---:|",
        ]
        for row in large_rows:
            status = row.get("status", "failed")
            if row["direction"] == "upload" and row.get("received") is not None:
                status = f"{status}, backend read {row['received']} bytes"
            if row.get("error"):
                status = f"{status} ({row['error']})"
            lines.append(
                table_row(
                    row["target"],
                    row["interpreter"],
                    row["direction"],
                    status,
                    f"{row.get('rate', 0):.0f}",
                    f"{row.get('seconds', 0):.1f}",
                    f"{row['idle'] / MIB:.1f} MiB",
                    f"{(row['peak'] - row['idle']) / MIB:.1f} MiB",
                )
            )
        lines += [""] + [f"- {note}" for note in large_notes]
    lines += [""] + targets_section(args, info, rows, large_rows, failures)
    return "\n".join(lines) + "\n"


# --- targets --------------------------------------------------------------

# The throughput targets: (requirement, measured side, compared side, least
# ratio of their req/s); a side is (target, interpreter).
RATIO_TARGETS = (
    (
        "Full gateway, CPython, one process >= 1.3x a bare treq proxy",
        ("gateway-full", "CPython"),
        ("bare-treq", "CPython"),
        1.3,
    ),
    (
        "`--workers 2` >= 1.6x one worker (full gateway, CPython)",
        ("gateway-full-2w", "CPython"),
        ("gateway-full", "CPython"),
        1.6,
    ),
    (
        "`--workers 2` >= 1.6x one worker (full gateway, PyPy)",
        ("gateway-full-2w", "PyPy"),
        ("gateway-full", "PyPy"),
        1.6,
    ),
    (
        "PyPy, one worker >= 3x CPython, one worker (full gateway)",
        ("gateway-full", "PyPy"),
        ("gateway-full", "CPython"),
        3.0,
    ),
    (
        "PyPy, 2 workers >= 25% of nginx, 1 worker (full gateway)",
        ("gateway-full-2w", "PyPy"),
        ("nginx-proxy-1w", "-"),
        0.25,
    ),
    (
        "PyPy, one worker >= 1.3x a bare aiohttp proxy on CPython (full gateway)",
        ("gateway-full", "PyPy"),
        ("bare-aiohttp", "CPython"),
        1.3,
    ),
    (
        "CPython, one worker >= 0.8x a bare aiohttp proxy on CPython (full gateway)",
        ("gateway-full", "CPython"),
        ("bare-aiohttp", "CPython"),
        0.8,
    ),
)
P99_LIMIT_MS = 5.0
RSS_LIMIT = 80 * MIB
GROWTH_LIMIT = 50 * MIB
DISTURBED = 10.0  # percent of a core used by other processes


def find_row(rows, target, interp, connections):
    for row in rows:
        if (row["target"], row["interpreter"], row["connections"]) == (target, interp, connections):
            return row
    return None


def why_missing(args, failures, target, interp, connections):
    if (target, interp, connections) in failures:
        return f"`{target}` ({interp}, -c{connections}): {failures[target, interp, connections]}"
    if (target, interp, None) in failures:
        return f"`{target}` ({interp}): {failures[target, interp, None]}"
    if target not in args.targets:
        return f"`{target}` not in --targets"
    if interp == "PyPy" and not args.pypy:
        return "no PyPy interpreter (--pypy)"
    return f"`{target}` ({interp}) not run"


def row_name(row):
    """A target and its interpreter, in words."""
    return f"`{row['target']}`" + ("" if row["interpreter"] == "-" else f" {row['interpreter']}")


def side_text(row, connections):
    """One side of a comparison: the target, and wrk's -c when not the main one."""
    name = row_name(row)
    if row["connections"] != connections:
        name += f" at -c{row['connections']}"
    return name


def caveats(rows):
    """What makes a figure doubtful: errors, or other processes using the CPU."""
    found = []
    for row in rows:
        if row["non2xx"] or row["socket"]:
            found.append(f"{row_name(row)}: {fmt_errors(row)} errors")
        if row["other_cpu"] > DISTURBED:
            found.append(f"{row_name(row)}: other CPU {row['other_cpu']:.0f}%")
    return "; ".join(found) or "-"


def percent(value):
    return f"{value:.1f}%" if value < 10 else f"{value:.0f}%"


def verdict(value, threshold, at_least):
    """'met', or how far value is on the wrong side, in percent of threshold."""
    short = (threshold - value) if at_least else (value - threshold)
    if short <= 0:
        return "met"
    return f"missed by {percent(100.0 * short / threshold)}"


def not_measured(requirement, threshold, why):
    return table_row(requirement, "-", "-", threshold, f"not measured: {why}", "-")


def targets_section(args, info, rows, large_rows, failures):
    """The targets table: each requirement, its figures, and met or missed."""
    lines = [
        "#### Targets",
        "",
        "Each requirement with the figures of this run it compares.  A ratio target"
        " missed says by how much the ratio is below its threshold, a limit missed by how much"
        " the value is above it, both in percent of the threshold.",
        "",
        table_row("requirement", "figures", "measured", "threshold", "verdict", "caveats"),
        "|---|---|---:|---:|---|---|",
    ]
    main = args.connections
    for requirement, (target, interp), (other, other_interp), least in RATIO_TARGETS:
        threshold = f">= {least:g}x"
        mine = find_row(rows, target, interp, main)
        theirs = find_row(rows, other, other_interp, main)
        if not (mine and theirs):
            why = [
                why_missing(args, failures, t, i, main)
                for row, t, i in ((mine, target, interp), (theirs, other, other_interp))
                if row is None
            ]
            lines.append(not_measured(requirement, threshold, "; ".join(why)))
            continue
        if theirs["rps"] <= 0:
            lines.append(not_measured(requirement, threshold, f"{row_name(theirs)}: 0 req/s"))
            continue
        ratio = mine["rps"] / theirs["rps"]
        lines.append(
            table_row(
                requirement,
                f"{side_text(mine, main)} {mine['rps']:.0f} req/s"
                f" / {side_text(theirs, main)} {theirs['rps']:.0f} req/s",
                f"{ratio:.2f}x",
                threshold,
                verdict(ratio, least, True),
                caveats([mine, theirs]),
            )
        )

    c10 = args.latency_connections
    requirement = (
        f"p99 latency at -c{c10} <= {P99_LIMIT_MS:g} ms, CPython, one worker (full gateway)"
    )
    threshold = f"<= {P99_LIMIT_MS:g} ms"
    row = find_row(rows, "gateway-full", "CPython", c10)
    if c10 <= 0:
        lines.append(not_measured(requirement, threshold, "--latency-connections 0"))
    elif row is None:
        why = why_missing(args, failures, "gateway-full", "CPython", c10)
        lines.append(not_measured(requirement, threshold, why))
    elif row["p99"] is None:
        lines.append(not_measured(requirement, threshold, "wrk gave no p99"))
    else:
        lines.append(
            table_row(
                requirement,
                f"{side_text(row, main)}: p99 {fmt_ms(row['p99'])}"
                f" (p50 {fmt_ms(row['p50'])}, {row['rps']:.0f} req/s)",
                fmt_ms(row["p99"]),
                threshold,
                verdict(row["p99"], P99_LIMIT_MS, False),
                caveats([row]),
            )
        )

    c200 = args.memory_connections
    requirement = f"RSS <= {RSS_LIMIT / MIB:g} MiB per CPython worker at -c{c200} (full gateway)"
    threshold = f"<= {RSS_LIMIT / MIB:g} MiB"
    row = find_row(rows, "gateway-full", "CPython", c200)
    if c200 <= 0:
        lines.append(not_measured(requirement, threshold, "--memory-connections 0"))
    elif row is None:
        why = why_missing(args, failures, "gateway-full", "CPython", c200)
        lines.append(not_measured(requirement, threshold, why))
    else:
        peak = max(row["hwm_by_pid"])
        lines.append(
            table_row(
                requirement,
                f"{side_text(row, main)}: VmHWM {peak / MIB:.1f} MiB after that run (the"
                f" process's peak over its life), {row['rps']:.0f} req/s",
                f"{peak / MIB:.1f} MiB",
                threshold,
                verdict(peak, RSS_LIMIT, False),
                caveats([row]),
            )
        )

    for interp_info, _ in info:
        lines.append(large_target(args, short_interpreter(interp_info), large_rows))
    return lines


def large_target(args, interp, large_rows):
    requirement = f"RSS flat while streaming a 1 GiB body: growth <= 50 MiB (gateway, {interp})"
    threshold = f"<= {GROWTH_LIMIT / MIB:g} MiB"
    transfers = [r for r in large_rows if r["target"] == "gateway" and r["interpreter"] == interp]
    why = None
    if not args.large:
        why = "run with --large"
    elif {row["direction"] for row in transfers} != {"download", "upload"}:
        why = "no download and upload through the gateway (see the notes above)"
    else:
        for row in transfers:
            moved = row.get("received") if row["direction"] == "upload" else row.get("bytes")
            if row.get("status") != 200 or moved != args.large_size:
                why = (
                    f"the {row['direction']} did not complete (status {row.get('status')},"
                    f" {moved} bytes)"
                )
    if why:
        return not_measured(requirement, threshold, why)
    growth = max(row["peak"] - row["idle"] for row in transfers)
    figures = ", ".join(
        f"{row['direction']} +{(row['peak'] - row['idle']) / MIB:.1f} MiB"
        f" (from {row['idle'] / MIB:.1f} MiB)"
        for row in transfers
    )
    return table_row(
        requirement,
        figures,
        f"{growth / MIB:.1f} MiB",
        threshold,
        verdict(growth, GROWTH_LIMIT, False),
        f"streamed {size_text(args.large_size)}, not 1 GiB" if args.large_size != GIB else "-",
    )


def record(path, text):
    """
    Add a run to a results file: at the end of its "## Proxy throughput"
    section when it has one (the other sections stay where they are), else
    at the end of the file.
    """
    heading = "\n" + SECTION + "\n"
    current = read(path)
    start = current.find(heading)
    if start < 0:
        with open(path, "a") as f:
            f.write("\n" + text)
        return
    end = current.find("\n## ", start + len(heading))
    end = len(current) if end < 0 else end + 1
    before = current[:end].rstrip("\n") + "\n\n"
    after = current[end:]
    with open(path, "w") as f:
        f.write(before + text + ("\n" + after if after else ""))


# --- main -----------------------------------------------------------------


def run(args, stack):
    tools = check_tools(args)
    pythons = [args.python] + ([args.pypy] if args.pypy else [])
    tmp = Path(tempfile.mkdtemp(prefix="infini-bench-"))
    if args.keep:
        say(f"temporary directory kept: {tmp}")
    else:
        stack.callback(shutil.rmtree, tmp, True)
    # nginx's workers may run as another user (root's default: nobody).
    os.chmod(tmp, 0o755)
    www = tmp / "www"
    www.mkdir()
    os.chmod(www, 0o755)
    with open(www / "large.bin", "wb") as f:
        f.truncate(args.large_size if args.large else 1)
    os.chmod(www / "large.bin", 0o644)

    env = gateway_env(args, tmp)
    info = [(interpreter_info(p, env), p) for p in pythons]
    rows, notes = [], []
    # Why a figure is missing, by (target, interpreter, wrk -c or None for any).
    failures = {}
    aiohttp = None
    if "bare-aiohttp" in args.targets:
        python, aiohttp_or_why = aiohttp_interpreter(args)
        if python:
            aiohttp = (aiohttp_or_why, python)
        else:
            say(f"bare-aiohttp skipped: {aiohttp_or_why}")
            notes.append(f"bare-aiohttp skipped: {aiohttp_or_why}")
            failures[("bare-aiohttp", "CPython", None)] = f"skipped: {aiohttp_or_why}"

    wait_for_load(args.load_threshold, args.max_wait)
    load_start = loadavg()
    started = datetime.now(timezone.utc)

    backend_ports = [free_port(), free_port()]
    body = "x" * (args.body_size - 1) + "\\n" if args.body_size else ""
    backend = start_nginx(
        tools,
        tmp,
        "backend",
        1,
        "".join(BACKEND_SERVER.format(port=p, tmp=tmp, body=body) for p in backend_ports),
    )
    stack.callback(backend.stop)
    for port in backend_ports:
        wait_http(backend, f"http://127.0.0.1:{port}/")
    backend_pids = backend.pids()

    def failed(name, interp, reason, connections=None):
        where = interp if connections is None else f"{interp}, -c{connections}"
        notes.append(f"{name} ({where}) failed: {reason}")
        failures[(name, interp, connections)] = reason

    def measured(name, interp, url, process, warmup=None, connections=None, workers=0):
        try:
            wait_http(process, url + args.path)
            if workers:
                found = wait_workers(process, workers)
                if found < workers:
                    notes.append(
                        f"{name} ({interp}): {found} of {workers} workers running when measured"
                    )
            rows.append(
                measure(
                    tools,
                    args,
                    name,
                    interp,
                    url + args.path,
                    process.pids(),
                    backend_pids,
                    args.warmup if warmup is None else warmup,
                    connections,
                )
            )
        except TargetFailed as e:
            say(str(e))
            failed(name, interp, last_line(e), connections)

    if "nginx-direct" in args.targets:
        rows.append(
            measure(
                tools,
                args,
                "nginx-direct",
                "-",
                f"http://127.0.0.1:{backend_ports[0]}{args.path}",
                backend_pids,
                [],
                args.warmup,
            )
        )
    for workers in (1, 2):
        name = f"nginx-proxy-{workers}w"
        if name in args.targets:
            port = free_port()
            proxy = start_nginx(
                tools, tmp, name, workers, PROXY_HTTP.format(port=port, backend=backend_ports[0])
            )
            try:
                measured(name, "-", f"http://127.0.0.1:{port}", proxy)
            finally:
                proxy.stop()

    if aiohttp:
        aiohttp_info_, python = aiohttp
        interp = short_interpreter(aiohttp_info_)
        if interp != "CPython":
            notes.append(f"bare-aiohttp runs on {interp} (`{python}`), not CPython")
        process, url = start_bare_aiohttp(tmp, python, "bare-aiohttp", backend_ports[0])
        try:
            measured("bare-aiohttp", interp, url, process)
        finally:
            process.stop()

    for interp_info, python in info:
        interp = short_interpreter(interp_info)
        warmup = args.pypy_warmup if interp == "PyPy" else args.warmup
        if "bare-treq" in args.targets:
            process, url = start_bare_treq(
                args, tmp, python, f"bare-treq-{interp.lower()}", backend_ports[0]
            )
            try:
                measured("bare-treq", interp, url, process, warmup=warmup)
            finally:
                process.stop()
        variants = [v for v in ("minimal", "full", "full-2w") if f"gateway-{v}" in args.targets]
        if not variants:
            continue
        features = gateway_features(python, env)
        if "error" in features or not features["proxy"]:
            if "error" in features:
                why = "its schema does not load"
                say(features["error"])
            else:
                why = "no proxy filter or upstream section yet"
            notes.append(f"gateway ({interp}): {why}: not measured")
            for variant in variants:
                failures[(f"gateway-{variant}", interp, None)] = why
            continue
        for variant in variants:
            name = f"gateway-{variant}"
            config, variant_notes = gateway_config(
                variant.replace("-2w", ""), features, tmp, backend_ports, path=args.path
            )
            extra, workers = (), 0
            if variant.endswith("-2w"):
                # Workers share a fixed port (SO_REUSEPORT).
                config["entry"][0]["network"]["binding"] = f"127.0.0.1:{free_port()}"
                extra, workers = ("--workers", "2"), 2
            notes += [f"{name} ({interp}): {note}" for note in variant_notes]
            try:
                process, url = start_gateway(
                    args, tmp, python, f"{name}-{interp.lower()}", config, extra
                )
            except TargetFailed as e:
                say(str(e))
                failures[(name, interp, None)] = f"did not start: {last_line(e)}"
                notes.append(f"{name} ({interp}) did not start: {last_line(e)}")
                continue
            try:
                measured(name, interp, url, process, warmup=warmup, workers=workers)
                if variant == "full" and interp == "CPython":
                    # The p99 and the peak RSS targets: the same target, other wrk -c.
                    for connections in extra_connections(args):
                        measured(name, interp, url, process, connections=connections)
            finally:
                process.stop()

    large_rows, large_notes = [], []
    if args.large:
        sink_port = free_port()
        sink = Process(
            "discard",
            [args.python, str(HERE / "backends" / "discard.py"), "--port", str(sink_port)],
            tmp,
        )
        stack.callback(sink.stop)
        wait_http(sink, f"http://127.0.0.1:{sink_port}/")
        large_rows, large_notes = run_large(tools, args, tmp, info, backend_ports[0], sink_port)

    text = report(
        args,
        tools,
        info,
        aiohttp,
        started,
        load_start,
        rows,
        notes,
        large_rows,
        large_notes,
        failures,
    )
    if args.output:
        record(args.output, text)
        say(f"recorded in {args.output}")
    else:
        sys.stdout.write(text)


def extra_connections(args):
    """wrk -c of the extra runs of gateway-full on CPython (none equal to the main -c)."""
    wanted = (args.latency_connections, args.memory_connections)
    return sorted({c for c in wanted if c > 0 and c != args.connections})


def wait_workers(process, workers, timeout=15.0):
    """Wait until the supervisor has its workers; the number it has."""
    deadline = time.monotonic() + timeout
    while len(process.pids()) - 1 < workers and time.monotonic() < deadline:
        time.sleep(0.1)
    return len(process.pids()) - 1


def main(argv=None):
    args = parse_args(argv)

    def terminated(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminated)
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(stop_all)
            run(args, stack)
    except Missing as e:
        print(e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130
    except TargetFailed as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
