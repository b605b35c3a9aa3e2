"""The JSON Schema of gateway.yml: built from the filter registry, shipped for editors."""

import glob
import json
import os
import subprocess
import sys

import pytest
import yaml
from jsonschema import Draft202012Validator

import infini_gateway.config
from infini_gateway import filters
from infini_gateway.config import load_config
from infini_gateway.config.schema import SCHEMA_FILE, build_schema, schema_text
from infini_gateway.filters import Filter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIPPED = os.path.join(os.path.dirname(infini_gateway.config.__file__), SCHEMA_FILE)
REGENERATE = (
    "the shipped schema is out of date: run"
    " `python -m infini_gateway.config.schema > infini_gateway/config/gateway.schema.json`"
)


def _shipped():
    with open(SHIPPED, encoding="utf-8") as f:
        return json.load(f)


def _examples():
    found = glob.glob(os.path.join(ROOT, "examples", "**", "*.yml"), recursive=True)
    invalid = os.path.join(ROOT, "examples", "invalid") + os.sep
    return sorted(path for path in found if not path.startswith(invalid))


def test_shipped_schema_is_current():
    """
    gateway.schema.json is what schema.py builds from the filters registered
    now: a filter added or changed without regenerating it fails here.
    """
    assert _shipped() == build_schema(), REGENERATE


def test_module_prints_the_schema():
    """C{python -m infini_gateway.config.schema} prints the shipped file's text."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run(
        [sys.executable, "-W", "error", "-m", "infini_gateway.config.schema"],
        check=True,
        capture_output=True,
        env=env,
        cwd=ROOT,
    )
    assert out.stderr == b""
    assert json.loads(out.stdout) == build_schema()
    assert out.stdout.decode("utf-8") == schema_text()


def test_shipped_schema_is_valid_draft_2020_12():
    schema = _shipped()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"]


def test_keys_are_documented():
    """Every key of the base structure has a title and a description for editors."""
    schema = build_schema(filters={})
    missing = []

    def walk(node, where):
        for key, sub in node.get("properties", {}).items():
            if not (sub.get("title") and sub.get("description")):
                missing.append(f"{where}.{key}")
            walk(sub, f"{where}.{key}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{where}[]")

    walk(schema, "")
    assert missing == []


class _Later(Filter):
    """A filter registered after import."""

    name = "later"
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}


def test_schema_reads_the_registry_when_built(monkeypatch):
    """A filter registered at any time appears in the next schema built."""
    monkeypatch.setitem(filters._REGISTRY, "later", _Later)
    items = build_schema()["properties"]["flow"]["items"]
    later = items["properties"]["filter"]["items"]["properties"]["later"]
    assert later["description"] == "A filter registered after import."
    validator = Draft202012Validator(build_schema())
    good = {"flow": [{"name": "f", "filter": [{"later": {"x": 1}}, {"later": None}]}]}
    assert list(validator.iter_errors(good)) == []
    assert not validator.is_valid(
        {"flow": [{"name": "f", "filter": [{"later": {"x": "a"}}]}]}
    )


def test_there_are_examples():
    assert _examples(), "expected at least one examples/**/*.yml"


@pytest.mark.parametrize("path", _examples() or ["<none>"], ids=os.path.basename)
def test_examples_validate_against_the_shipped_schema(path):
    """What editors check with the shipped file, every example passes."""
    if path == "<none>":
        pytest.fail("expected at least one examples/**/*.yml")
    with open(path, encoding="utf-8") as f:
        document = yaml.safe_load(f)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in Draft202012Validator(_shipped()).iter_errors(document)
    ]
    assert errors == []


@pytest.mark.parametrize("path", _examples() or ["<none>"], ids=os.path.basename)
def test_examples_load(path):
    """Every example also passes the loader's checks of meaning."""
    if path == "<none>":
        pytest.fail("expected at least one examples/**/*.yml")
    load_config(path)
