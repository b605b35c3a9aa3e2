"""
A router's client address lists in gateway.yml: the seed's
denied_client_ip_list, INFINI's permitted_client_ip_list and
ip_access_control section, what they become, and their mistakes.
"""

import ipaddress
import textwrap

import pytest

from infini_gateway.config import ConfigError, config_from_dict, load_config
from infini_gateway.config.model import ClientIPAccess, RouterConfig, parse_client_ip

HEAD = """\
entry:
  - name: web
    router: my_router
    network: {binding: "127.0.0.1:0"}
flow:
  - name: default_flow
    filter:
      - echo: {message: hi}
router:
  - name: my_router
    default_flow: default_flow
"""


def nets(*texts):
    return tuple(ipaddress.ip_network(t) for t in texts)


@pytest.fixture
def load(tmp_path, monkeypatch):
    """Load a gateway.yml made of HEAD and the router keys given."""
    monkeypatch.chdir(tmp_path)

    def load(router_keys):
        with open("gateway.yml", "w") as f:
            f.write(HEAD + textwrap.indent(textwrap.dedent(router_keys), "    "))
        return load_config("gateway.yml")

    return load


@pytest.fixture
def problems(load):
    def problems(router_keys):
        with pytest.raises(ConfigError) as caught:
            load(router_keys)
        return caught.value.problems

    return problems


# What the keys become


def test_no_lists_means_no_restriction(load):
    router = load("").router("my_router")
    assert router.access == ClientIPAccess()
    assert not router.access.restricted
    assert RouterConfig(name="x").access == ClientIPAccess()


def test_seed_denied_client_ip_list(load):
    """The seed's example: 133.37.55.22 is denied."""
    router = load(
        """
        denied_client_ip_list:
          - 133.37.55.22
        """
    ).router("my_router")
    assert router.access.denied == nets("133.37.55.22/32")
    assert router.access.permitted == ()
    assert router.access.restricted


def test_infini_ip_access_control_section(load):
    access = load(
        """
        ip_access_control:
          enabled: true
          client_ip:
            denied: [133.37.55.22, "2001:db8::/32"]
            permitted: [10.0.0.0/8, "::1"]
        """
    ).router("my_router").access
    assert access.denied == nets("133.37.55.22/32", "2001:db8::/32")
    assert access.permitted == nets("10.0.0.0/8", "::1/128")


def test_enabled_defaults_to_true_when_the_section_is_present(load):
    access = load(
        """
        ip_access_control:
          client_ip:
            permitted: [133.37.55.22]
        """
    ).router("my_router").access
    assert access.permitted == nets("133.37.55.22/32")


def test_disabled_section_is_ignored_but_the_seed_list_still_applies(load):
    access = load(
        """
        denied_client_ip_list: [10.0.0.1]
        ip_access_control:
          enabled: false
          client_ip:
            denied: [10.0.0.2]
            permitted: [10.0.0.0/8]
        """
    ).router("my_router").access
    assert access == ClientIPAccess(denied=["10.0.0.1"])


def test_both_spellings_merge_without_repeats(load):
    """Denied is the union of both spellings, in the order written; so is permitted."""
    access = load(
        """
        denied_client_ip_list: [10.0.0.1, 10.0.0.2]
        permitted_client_ip_list: [10.0.0.0/8]
        ip_access_control:
          client_ip:
            denied: [10.0.0.2, "::1"]
            permitted: [192.168.0.0/16, 10.0.0.0/8]
        """
    ).router("my_router").access
    assert access.denied == nets("10.0.0.1/32", "10.0.0.2/32", "::1/128")
    assert access.permitted == nets("10.0.0.0/8", "192.168.0.0/16")


def test_host_bits_set_are_accepted_as_the_network(load):
    """INFINI users write 192.168.3.1/24: it is 192.168.3.0/24."""
    access = load("denied_client_ip_list: [192.168.3.1/24, '2001:db8::1/32']\n").router(
        "my_router"
    ).access
    assert access.denied == nets("192.168.3.0/24", "2001:db8::/32")


def test_empty_lists_restrict_nothing(load):
    access = load(
        """
        denied_client_ip_list: []
        ip_access_control: {client_ip: {permitted: []}}
        """
    ).router("my_router").access
    assert not access.restricted


def test_from_a_dict():
    config = config_from_dict(
        {
            "entry": [{"name": "web", "network": {"binding": "127.0.0.1:0"}}],
            "router": [
                {
                    "name": "default",
                    "denied_client_ip_list": ["10.0.0.0/8"],
                    "ip_access_control": {"client_ip": {"permitted": ["::/0"]}},
                }
            ],
        }
    )
    assert config.router("default").access == ClientIPAccess(
        denied=nets("10.0.0.0/8"), permitted=["::/0"]
    )


def test_model_values_are_frozen_tuples_of_networks():
    access = ClientIPAccess(denied=["10.0.0.1", "10.0.0.1/32"], permitted=["::1"])
    assert access.denied == nets("10.0.0.1/32")
    assert isinstance(access.permitted, tuple)
    with pytest.raises(AttributeError):
        access.denied = ()
    assert hash(access) == hash(ClientIPAccess(denied=["10.0.0.1"], permitted=["::1"]))


@pytest.mark.parametrize("value", ["10.0.0.300", "10.0.0.0/33", "::1::2", "", "any", 5])
def test_parse_client_ip_rejects(value):
    with pytest.raises(ValueError) as caught:
        parse_client_ip(value)
    assert str(caught.value).startswith(
        "expected an IP address or CIDR block such as 10.0.0.0/8, got "
    )


# Mistakes


def test_invalid_address_in_the_seed_list(problems):
    assert problems(
        """
        denied_client_ip_list:
          - 133.37.55.22
          - 10.0.0.300
        """
    ) == [
        "gateway.yml:15: router[0].denied_client_ip_list[1]:"
        " expected an IP address or CIDR block such as 10.0.0.0/8, got '10.0.0.300'"
    ]


def test_invalid_blocks_in_the_infini_section(problems):
    assert problems(
        """
        ip_access_control:
          enabled: true
          client_ip:
            denied:
              - 10.0.0.0/33
            permitted:
              - "::1"
              - "fe80::zz"
        """
    ) == [
        "gateway.yml:17: router[0].ip_access_control.client_ip.denied[0]:"
        " expected an IP address or CIDR block such as 10.0.0.0/8, got '10.0.0.0/33'",
        "gateway.yml:20: router[0].ip_access_control.client_ip.permitted[1]:"
        " expected an IP address or CIDR block such as 10.0.0.0/8, got 'fe80::zz'",
    ]


def test_invalid_entry_is_reported_even_when_the_section_is_disabled(problems):
    assert problems(
        """
        ip_access_control:
          enabled: false
          client_ip: {denied: [localhost]}
        """
    ) == [
        "gateway.yml:15: router[0].ip_access_control.client_ip.denied[0]:"
        " expected an IP address or CIDR block such as 10.0.0.0/8, got 'localhost'"
    ]


def test_not_a_string_in_a_list(problems):
    assert problems("permitted_client_ip_list: [10.0.0.1, 42]\n") == [
        "gateway.yml:12: router[0].permitted_client_ip_list[1]:"
        " expected an IP address or CIDR block such as 10.0.0.0/8, got 42"
    ]


def test_a_single_string_instead_of_a_list(problems):
    assert problems("denied_client_ip_list: 133.37.55.22\n") == [
        "gateway.yml:12: router[0].denied_client_ip_list:"
        " expected a list, got '133.37.55.22'"
    ]


def test_unknown_keys_in_the_section(problems):
    assert problems(
        """
        ip_access_control:
          enable: true
          client_ip: {deny: [10.0.0.1]}
        """
    ) == [
        "gateway.yml:14: router[0].ip_access_control.enable: unknown key 'enable'"
        " (did you mean 'enabled'? expected one of: enabled, client_ip)",
        "gateway.yml:15: router[0].ip_access_control.client_ip.deny: unknown key"
        " 'deny' (did you mean 'denied'? expected one of: denied, permitted)",
    ]


def test_enabled_must_be_a_boolean(problems):
    assert problems("ip_access_control: {enabled: yes please}\n") == [
        "gateway.yml:12: router[0].ip_access_control.enabled:"
        " expected true or false, got 'yes please'"
    ]
