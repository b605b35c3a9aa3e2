"""
Property-based fuzzing (hypothesis) of the configuration loader: valid
gateway.yml documents with values swapped, keys added and text mangled.
Whatever comes in, loading gives a configuration or a L{ConfigError}, never
another exception.  Bounded: a fixed number of examples each.
"""

import copy
from typing import Any, List

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from infini_gateway.config import ConfigError, config_from_dict, load_config
from infini_gateway.config.model import GatewayConfig

FUZZ = settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

BASE = {
    "path": {"data": "./data", "logs": "./log"},
    "entry": [
        {
            "name": "web",
            "network": {"binding": "127.0.0.1:8000"},
            "max_concurrency": 100,
            "idle_timeout": "30s",
            "read_timeout": "10s",
            "write_timeout": "10s",
            "max_header_size": "64kb",
            "max_request_body_size": "200mb",
            "max_conns_per_ip": 5,
            "tls": {"enabled": False},
        }
    ],
    "router": [
        {
            "name": "default",
            "default_flow": "main",
            "rules": [{"method": ["GET"], "pattern": ["/user/{id}"], "flow": ["main"]}],
            "denied_client_ip_list": ["10.0.0.0/8"],
        }
    ],
    "flow": [
        {
            "name": "main",
            "filter": [
                {"set_request_header": {"headers": ["X-Env -> prod"]}},
                {"proxy": {"upstream": "api"}},
            ],
        }
    ],
    "upstream": [
        {
            "name": "api",
            "endpoints": [
                "http://127.0.0.1:9001",
                {"url": "http://127.0.0.1:9002", "weight": 3},
            ],
            "balancer": "roundrobin",
            "timeout": {"connect": "1s", "send": "1s", "read": "1s"},
            "retries": 1,
        }
    ],
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(
        [
            "0s",
            "1ms",
            "-1s",
            "1m30s",
            "64kb",
            "0kb",
            "1gb",
            "::1",
            "[::]:80",
            "*",
            "{x}",
            "/",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=8), inner, max_size=3),
    ),
    max_leaves=8,
)


def paths(node: Any, prefix=()) -> List[tuple]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found.extend(paths(value, prefix + (key,)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(paths(value, prefix + (index,)))
    return found


ALL_PATHS = paths(BASE)[1:]


def mutate(document: dict, path: tuple, value: Any, add_key: bool) -> dict:
    document = copy.deepcopy(document)
    node = document
    for step in path[:-1]:
        node = node[step]
    if add_key and isinstance(node, dict):
        node[f"extra_{len(path)}"] = value
    else:
        node[path[-1]] = value
    return document


def loads(load) -> None:
    try:
        assert isinstance(load(), GatewayConfig)
    except ConfigError as e:
        assert str(e)


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from(ALL_PATHS), values, st.booleans()),
        min_size=1,
        max_size=4,
    )
)
# Found by this test: a flow's filter list given as a scalar crashed the
# template check (TypeError) instead of being reported.
@example(mutations=[(("flow", 0, "filter"), True, False)])
@example(mutations=[(("flow", 0, "filter"), 7, False)])
def test_any_value_anywhere_loads_or_is_a_config_error(mutations):
    document = BASE
    for path, value, add_key in mutations:
        try:
            document = mutate(document, path, value, add_key)
        except (KeyError, IndexError, TypeError):
            continue
    loads(lambda: config_from_dict(document))


def test_the_base_document_is_valid():
    config = config_from_dict(BASE)
    assert config.entries[0].max_conns_per_ip == 5


BASE_TEXT = yaml.safe_dump(BASE, sort_keys=False)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0),
            st.integers(min_value=0, max_value=8),
            st.text(max_size=6),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_mangled_yaml_text_loads_or_is_a_config_error(tmp_path_factory, edits):
    text = BASE_TEXT
    for position, removed, inserted in edits:
        position %= len(text) + 1
        text = text[:position] + inserted + text[position + removed :]
    path = tmp_path_factory.mktemp("fuzz") / "gateway.yml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    loads(lambda: load_config(path))


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_load_or_are_a_config_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "gateway.yml"
    path.write_bytes(data)
    loads(lambda: load_config(path))
