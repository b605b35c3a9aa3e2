"""gateway.yml files (and dicts built in code) that load, and what they become."""

import os
import textwrap

import pytest

from infini_gateway.config import ConfigError, config_from_dict, load_config
from infini_gateway.config.model import (
    Entry,
    EntryTLS,
    FilterSpec,
    FlowConfig,
    GatewayConfig,
    Network,
    Paths,
    RouterConfig,
    Rule,
)

SEED = """\
path: {data: ./data, logs: ./log}
entry:
  - name: my_es_entry
    enabled: true
    router: my_router
    max_concurrency: 200
    idle_timeout: 500ms
    network:
      binding: 0.0.0.0:8000
      publish: 192.168.3.10:8000
      reuse_port: true
    tls: {enabled: true, cert_file: tls/cert.pem, key_file: tls/key.pem}
  - name: v6
    router: my_router
    network:
      host: "::1"
      port: 0
router:
  - name: my_router
    default_flow: default_flow
    tracing_flow: default_flow
    rules:
      - method: [PUT, POST]
        pattern: ["/_bulk", "/{index_name}/_bulk"]
        flow: [bulk_process_flow]
      - method: GET
        pattern: /_search
        flow: default_flow
      - pattern: /any
        flow: [default_flow, bulk_process_flow]
flow:
  - name: default_flow
    filter:
      - echo: {message: "hello"}
      - echo:
  - name: bulk_process_flow
"""


@pytest.fixture
def write(tmp_path, monkeypatch):
    """Write gateway.yml in a fresh current directory; return its name."""
    monkeypatch.chdir(tmp_path)

    def write(text, name="gateway.yml"):
        with open(name, "w") as f:
            f.write(textwrap.dedent(text))
        return name

    return write


def test_seed_keys(write):
    """The seed documents' keys become the model's frozen values."""
    config = load_config(write(SEED))
    assert config == GatewayConfig(
        source="gateway.yml",
        base_dir=os.getcwd(),
        paths=Paths(data="./data", logs="./log"),
        entries=(
            Entry(
                name="my_es_entry",
                enabled=True,
                router="my_router",
                max_concurrency=200,
                idle_timeout=0.5,
                network=Network(
                    host="0.0.0.0",
                    port=8000,
                    publish="192.168.3.10:8000",
                    reuse_port=True,
                    skip_occupied_port=False,
                ),
                tls=EntryTLS(
                    enabled=True, cert_file="tls/cert.pem", key_file="tls/key.pem"
                ),
            ),
            Entry(name="v6", router="my_router", network=Network(host="::1", port=0)),
        ),
        routers=(
            RouterConfig(
                name="my_router",
                default_flow="default_flow",
                tracing_flow="default_flow",
                rules=(
                    Rule(
                        methods=("PUT", "POST"),
                        patterns=("/_bulk", "/{index_name}/_bulk"),
                        flows=("bulk_process_flow",),
                    ),
                    Rule(
                        methods=("GET",),
                        patterns=("/_search",),
                        flows=("default_flow",),
                    ),
                    Rule(
                        methods=("*",),
                        patterns=("/any",),
                        flows=("default_flow", "bulk_process_flow"),
                    ),
                ),
            ),
        ),
        flows=(
            FlowConfig(
                name="default_flow",
                filters=(
                    FilterSpec("echo", {"message": "hello"}),
                    FilterSpec("echo", {}),
                ),
            ),
            FlowConfig(name="bulk_process_flow"),
        ),
    )


def test_filter_params_are_plain_and_located(write):
    """Filter parameters are plain values; C{where} names file, line and path."""
    config = load_config(write(SEED))
    first, second = config.flow("default_flow").filters
    assert type(first.params["message"]) is str
    assert dict(second.params) == {}
    assert first.where == "gateway.yml:34: flow[0].filter[0].echo"
    assert second.where == "gateway.yml:35: flow[0].filter[1].echo"


def test_defaults(write):
    """Keys left out take the model's defaults."""
    config = load_config(
        write(
            """\
            entry:
              - name: e
                network: {binding: "127.0.0.1:8000"}
            router:
              - name: default
            """
        )
    )
    (entry,) = config.entries
    assert entry == Entry(name="e", network=Network(host="127.0.0.1", port=8000))
    assert entry.idle_timeout == 30.0
    assert entry.router == "default"
    assert config.paths == Paths()
    assert config.router("default") == RouterConfig(name="default")


def test_base_dir_is_the_files_directory(tmp_path):
    """Relative paths stay as written; base_dir is the config file's directory."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "gateway.yml").write_text("path: {data: ../data}\n")
    config = load_config(str(conf / "gateway.yml"))
    assert config.base_dir == str(conf)
    assert config.paths.data == "../data"
    assert config.source == str(conf / "gateway.yml")


def test_from_dict():
    """A dict built in code is checked the same way, tuples taken as lists."""
    config = config_from_dict(
        {
            "entry": [{"name": "e", "network": {"binding": "[::]:0"}, "router": "r"}],
            "router": [
                {
                    "name": "r",
                    "rules": ({"method": "GET", "pattern": "/", "flow": "f"},),
                }
            ],
            "flow": [{"name": "f", "filter": [{"echo": None}]}],
        }
    )
    assert config.source == "<dict>"
    assert config.base_dir == "."
    assert config.entries[0].network == Network(host="::", port=0)
    assert config.flow("f").filters[0].where == "<dict>: flow[0].filter[0].echo"


def test_from_dict_problems_have_no_lines():
    """Messages about a dict name the source and the key path only."""
    with pytest.raises(ConfigError) as caught:
        config_from_dict(
            {
                "entry": [
                    {"name": "a", "router": "r", "network": {"binding": "127.0.0.1:1"}},
                    {"name": "b", "router": "r", "network": {"binding": "8000"}},
                ],
                "router": [{"name": "r"}],
            }
        )
    assert caught.value.problems == [
        "<dict>: entry[1].network.binding: expected HOST:PORT, got '8000'"
    ]


def test_from_dict_does_not_change_its_argument():
    """The caller's dict is left as it was."""
    data = {"flow": [{"name": "f", "filter": [{"echo": None}]}]}
    config_from_dict(data)
    assert data == {"flow": [{"name": "f", "filter": [{"echo": None}]}]}


def test_error_text_is_the_problems():
    """C{str(ConfigError)} is its problems, one a line."""
    err = ConfigError(["a.yml:1: x: expected y", "a.yml:2: z: expected w"])
    assert str(err) == "a.yml:1: x: expected y\na.yml:2: z: expected w"
    assert err.problems == ["a.yml:1: x: expected y", "a.yml:2: z: expected w"]
