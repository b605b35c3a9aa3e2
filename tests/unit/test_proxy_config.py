"""The upstream and elasticsearch sections: values, defaults and mistakes."""

import textwrap

import pytest

from infini_gateway.config import ConfigError, config_from_dict, load_config
from infini_gateway.config.model import EndpointConfig, Timeouts
from infini_gateway.service import Runtime

FLOW = """
flow:
  - name: main
    filter:
      - proxy: {upstream: api}
"""


def load(tmp_path, text, use_flow=False):
    path = tmp_path / "gateway.yml"
    path.write_text(textwrap.dedent(FLOW) + textwrap.dedent(text) if use_flow else textwrap.dedent(text))
    return load_config(str(path))


def problems(tmp_path, text):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    return [p.replace(str(tmp_path) + "/", "") for p in caught.value.problems]


def test_upstream_values_and_defaults(tmp_path):
    """Strings and mappings as endpoints; 60s timeouts and endpoints - 1 retries by default."""
    config = load(
        tmp_path,
        """
        upstream:
          - name: api
            endpoints: ["http://127.0.0.1:9001", {url: "https://b.example", weight: 3, priority: 1}]
          - name: tuned
            endpoints: ["http://127.0.0.1:9003"]
            balancer: chash
            hash_on: header
            key: X-User
            timeout: {connect: 500ms, read: 3s}
            retries: 0
            retry_timeout: 10s
            retry_on_status: [502, 503]
            retry_non_idempotent: true
            pass_host: rewrite
            upstream_host: internal.svc
            keepalive_pool: {size: 4, idle_timeout: 5s}
            tls: {skip_insecure_verify: true, sni: b.example}
        """,
        use_flow=True,
    )
    api = config.upstream("api")
    assert api.endpoints == (
        EndpointConfig("http://127.0.0.1:9001"),
        EndpointConfig("https://b.example", weight=3, priority=1),
    )
    assert api.timeout == Timeouts(60.0, 60.0, 60.0)
    assert api.max_retries == 1
    assert api.retry_timeout is None
    assert api.tls.verify is True
    tuned = config.upstream("tuned")
    assert tuned.timeout == Timeouts(connect=0.5, send=60.0, read=3.0)
    assert (tuned.max_retries, tuned.retry_timeout) == (0, 10.0)
    assert tuned.retry_on_status == (502, 503)
    assert (tuned.hash_on, tuned.key, tuned.pass_host) == ("header", "X-User", "rewrite")
    assert (tuned.keepalive_pool.size, tuned.keepalive_pool.idle_timeout) == (4, 5.0)
    assert tuned.tls.verify is False


def test_elasticsearch_clusters(tmp_path):
    """INFINI's keys: endpoint(s), or schema with host(s); basic_auth as a header."""
    config = load(
        tmp_path,
        """
        elasticsearch:
          - name: prod
            enabled: true
            endpoint: http://10.0.0.1:9200
            endpoints: ["http://10.0.0.2:9200"]
            basic_auth: {username: elastic, password: s3cr3t}
          - name: dev
            schema: https
            hosts: ["10.0.1.1:9200", "10.0.1.2:9200"]
            request_timeout: 5
        """,
    )
    prod, dev = config.elasticsearch
    assert [e.url for e in prod.upstream.endpoints] == [
        "http://10.0.0.1:9200",
        "http://10.0.0.2:9200",
    ]
    assert prod.upstream.request_headers == (("Authorization", "Basic ZWxhc3RpYzpzM2NyM3Q="),)
    assert "ZWxhc3RpYzpzM2NyM3Q=" not in repr(prod)
    assert [e.url for e in dev.upstream.endpoints] == [
        "https://10.0.1.1:9200",
        "https://10.0.1.2:9200",
    ]
    assert dev.upstream.timeout.read == 5.0


def test_mistakes_are_reported_with_file_and_line(tmp_path):
    found = problems(
        tmp_path,
        """
        flow:
          - name: main
            filter:
              - proxy: {upstream: apj}
              - elasticsearch: {elasticsearch: nope}
              - http: {schema: http}
        upstream:
          - name: api
            endpoints: ["ftp://x", "http://", "http://h:99999", "http://h/path"]
            hash_on: header
            pass_host: rewrite
            timeout: {read: soon}
            tls: {cert_file: c.pem}
          - name: api
            endpoints: ["http://127.0.0.1:1"]
        """,
    )
    assert found == [
        "gateway.yml:5: flow[0].filter[0].proxy.upstream: expected the name of an"
        " upstream, got 'apj' (did you mean 'api'? upstreams: api)",
        "gateway.yml:6: flow[0].filter[1].elasticsearch.elasticsearch: expected the name"
        " of an elasticsearch cluster, got 'nope' (no elasticsearch clusters are defined)",
        "gateway.yml:7: flow[0].filter[2].http: expected host or hosts (HOST:PORT)",
        "gateway.yml:10: upstream[0].endpoints[0]: expected an http:// or https:// URL,"
        " got 'ftp://x'",
        "gateway.yml:10: upstream[0].endpoints[1]: expected an endpoint URL such as"
        " http://127.0.0.1:9001, got 'http://'",
        "gateway.yml:10: upstream[0].endpoints[2]: expected an endpoint URL such as"
        " http://127.0.0.1:9001, got 'http://h:99999' (a port from 1 to 65535)",
        "gateway.yml:10: upstream[0].endpoints[3]: expected an endpoint URL such as"
        " http://127.0.0.1:9001, got 'http://h/path' (no path, query or fragment)",
        "gateway.yml:11: upstream[0].hash_on: expected key too (the header whose value"
        " is hashed)",
        "gateway.yml:12: upstream[0].pass_host: expected upstream_host too (the Host to"
        " send)",
        "gateway.yml:13: upstream[0].timeout.read: expected a duration such as 500ms, 3s"
        " or 1m, got 'soon'",
        "gateway.yml:14: upstream[0].tls.cert_file: expected key_file too",
        "gateway.yml:15: upstream[1].name: duplicate upstream name 'api' (also at line 9;"
        " expected unique names)",
    ]


def test_unknown_balancer_and_key(tmp_path):
    found = problems(
        tmp_path,
        """
        upstream:
          - name: api
            endpoints: ["http://127.0.0.1:1"]
            balancer: random
            retrys: 2
        """,
    )
    assert len(found) == 2
    assert found[0].startswith("gateway.yml:5: upstream[0].balancer:")
    assert "roundrobin, least_conn, ewma, chash" in found[0]
    assert found[1].startswith("gateway.yml:6: upstream[0].retrys: unknown key")


def test_disabled_cluster_cannot_be_used(tmp_path):
    found = problems(
        tmp_path,
        """
        flow:
          - name: main
            filter:
              - elasticsearch: {elasticsearch: old}
        elasticsearch:
          - name: old
            enabled: false
            endpoint: http://127.0.0.1:9200
        """,
    )
    assert found == [
        "gateway.yml:5: flow[0].filter[0].elasticsearch.elasticsearch: cluster 'old'"
        " is disabled (enabled: false)"
    ]


def test_runtime_upstreams_and_anonymous_http_upstreams():
    """Named upstreams, clusters and http filters' hosts share one set, by name."""
    config = config_from_dict(
        {
            "flow": [
                {
                    "name": "main",
                    "filter": [
                        {"http": {"hosts": ["127.0.0.1:1", "127.0.0.1:2"]}},
                        {"http": {"hosts": ["127.0.0.1:1", "127.0.0.1:2"]}},
                        {"http": {"hosts": ["127.0.0.1:1", "127.0.0.1:2"], "max_retry_times": 0}},
                    ],
                }
            ],
            "upstream": [{"name": "api", "endpoints": ["http://127.0.0.1:3"]}],
            "elasticsearch": [{"name": "es", "endpoint": "http://127.0.0.1:4"}],
        }
    )
    from infini_gateway.flow import build_flows

    runtime = Runtime(None, config)
    flow = build_flows(config.flows, runtime)["main"]
    first, second, third = (step[2].upstream for step in flow.steps)
    assert first is second
    assert third is not first
    assert sorted(runtime.upstreams) == [
        "api",
        "elasticsearch:es",
        "http:127.0.0.1:1,127.0.0.1:2",
        "http:127.0.0.1:1,127.0.0.1:2#2",
    ]
    api = runtime.upstreams["api"]
    assert [e.url for e in api.endpoints] == ["http://127.0.0.1:3"]
    assert api.balancer.kind == "roundrobin"


def test_unreadable_tls_file_is_a_config_error(tmp_path):
    config = config_from_dict(
        {
            "upstream": [
                {
                    "name": "api",
                    "endpoints": ["https://127.0.0.1:3"],
                    "tls": {"ca_file": "missing.pem"},
                }
            ]
        },
        base_dir=str(tmp_path),
    )
    with pytest.raises(ConfigError) as caught:
        Runtime(None, config).upstreams
    (problem,) = caught.value.problems
    assert problem.startswith("<dict>: upstream 'api': tls.ca_file ")
    assert problem.endswith("missing.pem: no such file")


def test_keepalive_pool_without_idle_timeout_takes_the_default():
    """A keepalive_pool naming only its size keeps the default idle timeout."""
    config = config_from_dict(
        {
            "upstream": [
                {"name": "a", "endpoints": ["http://127.0.0.1:1"], "keepalive_pool": {"size": 4}}
            ]
        }
    )
    pool = config.upstreams[0].keepalive_pool
    assert (pool.size, pool.idle_timeout) == (4, 60.0)
