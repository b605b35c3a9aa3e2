"""
C{--pypy-jit}: the JIT parameters the gateway sets on PyPy (nothing on
CPython), and a clear stop for a value PyPy does not take.
"""

import platform

import pytest

from twisted.python import usage

from infini_gateway.tap import PYPY_JIT_PARAMS, Options, tune_pypy_jit

ON_PYPY = platform.python_implementation() == "PyPy"

CONFIG = """\
entry:
  - name: web
    router: r
    network: {binding: "127.0.0.1:0"}
router:
  - name: r
    default_flow: hello
flow:
  - name: hello
    filter:
      - echo: {message: hi}
"""


def test_empty_parameters_leave_the_jit_alone():
    assert tune_pypy_jit("") is False


def test_the_parameters_are_set_on_pypy_only():
    assert tune_pypy_jit(PYPY_JIT_PARAMS) is ON_PYPY


@pytest.mark.skipif(not ON_PYPY, reason="CPython has no JIT parameters to refuse")
def test_a_bad_value_stops_twistd_with_a_message(tmp_path, capsys):
    config = tmp_path / "gateway.yml"
    config.write_text(CONFIG)
    with pytest.raises(SystemExit) as exit:
        Options().parseOptions(["--config", str(config), "--pypy-jit", "bogus=1"])
    assert exit.value.code == 1
    assert "--pypy-jit: expected NAME=VALUE" in capsys.readouterr().err


def test_the_option_defaults_to_the_tuned_parameters(tmp_path):
    config = tmp_path / "gateway.yml"
    config.write_text(CONFIG)
    options = Options()
    options.parseOptions(["--config", str(config)])
    assert options["pypy-jit"] == PYPY_JIT_PARAMS
    options = Options()
    options.parseOptions(["--config", str(config), "--pypy-jit", ""])
    assert options["pypy-jit"] == ""
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--config", str(config), "--pypy-jit"])
