"""
Intentions (source globs, first match, default, anonymous), the client
identity of a certificate, the intentions filter on a Site fed raw bytes,
a tcp entry's intentions after the handshake, client certificates in the
entry's TLS options, and their configuration checks.
"""

import importlib.util
import json
from pathlib import Path

import pytest
from cryptography import x509
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from infini_gateway.config import ConfigError, config_from_dict
from infini_gateway.config.model import Entry, EntryTLS, IntentionRule, Intentions, Network
from infini_gateway.identity import certificate_identity, peer_identity
from infini_gateway.intentions import ANONYMOUS, IntentionRules, compile_source
from infini_gateway.tls import TLSConfigError, server_options
from tests.unit._site import make_site

REPO = Path(__file__).resolve().parents[2]
WEB = "spiffe://example.org/ns/default/dc/dc1/svc/web"
DB = "spiffe://example.org/ns/default/dc/dc1/svc/db"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """examples/make-certs.py's files, in a directory of their own."""
    spec = importlib.util.spec_from_file_location("make_certs", REPO / "examples" / "make-certs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_certs(tmp_path_factory.mktemp("certs"))


def load(certs, stem):
    return x509.load_pem_x509_certificate((certs / f"{stem}.crt").read_bytes())


def rules(*pairs, default="deny"):
    return IntentionRules(
        Intentions(tuple(IntentionRule(s, a) for s, a in pairs), default=default)
    )


# Matching


@pytest.mark.parametrize(
    "source, identity, matches",
    [
        (WEB, WEB, True),
        (WEB, DB, False),
        (WEB, WEB + "x", False),
        ("spiffe://example.org/ns/default/dc/*/svc/web", WEB, True),
        ("spiffe://example.org/ns/default/dc/*/svc/web", "spiffe://example.org/ns/default/dc/a/b/svc/web", False),
        ("spiffe://example.org/**", DB, True),
        ("spiffe://example.org/**", "spiffe://example.com/ns/default", False),
        ("*", ANONYMOUS, True),
        ("*", WEB, False),
        ("**", WEB, True),
        ("web.[internal]", "web.[internal]", True),
        ("web.?", "web.x", False),
    ],
)
def test_source_globs(source, identity, matches):
    assert bool(compile_source(source).fullmatch(identity)) is matches


def test_first_matching_rule_decides():
    intentions = rules((DB, "deny"), ("spiffe://example.org/**", "allow"))
    assert intentions.decide(WEB).allowed
    decision = intentions.decide(DB)
    assert not decision.allowed
    assert decision.rule == 0
    assert decision.describe() == f"rules[0] (deny {DB})"


def test_default_decides_when_no_rule_matches_and_is_deny_unless_told():
    assert not rules((WEB, "allow")).decide(DB).allowed
    assert rules((WEB, "deny"), default="allow").decide(DB).allowed
    assert rules((WEB, "allow")).decide(DB).describe() == "default (deny)"


def test_a_client_without_certificate_is_anonymous():
    decision = rules((ANONYMOUS, "allow")).decide(None)
    assert decision.allowed and decision.identity == "anonymous"
    assert not rules((WEB, "allow")).decide(None).allowed


# Identities


def test_identity_is_the_uri_san(certs):
    assert certificate_identity(load(certs, "web")) == WEB


def test_identity_falls_back_to_dns_san_then_cn(certs):
    assert certificate_identity(load(certs, "web-dc1")) == "web.default.dc1.internal.example.org"
    # The CA has no SAN at all: its CN.
    assert certificate_identity(load(certs, "ca")) == "example.org mesh CA"


class _TLSTransport(StringTransport):
    def __init__(self, certificate=None, **kwargs):
        super().__init__(**kwargs)
        self.certificate = certificate

    def getPeerCertificate(self):
        return self.certificate


def test_peer_identity_of_transports(certs):
    assert peer_identity(_TLSTransport(load(certs, "db"))) == DB
    assert peer_identity(_TLSTransport(None)) is None
    assert peer_identity(StringTransport()) is None


# The filter


def exchange(site, transport):
    channel = site.buildProtocol(None)
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    return transport.value()


def intentions_site(default="deny"):
    return make_site(
        [
            (
                "intentions",
                {
                    "rules": [
                        {"source": DB, "action": "deny"},
                        {"source": "spiffe://example.org/ns/default/dc/*/svc/*", "action": "allow"},
                    ],
                    "default": default,
                },
            ),
            ("echo", {"message": "passed"}),
        ]
    )


def answer(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def test_filter_lets_an_allowed_identity_on(certs):
    status, body = answer(exchange(intentions_site(), _TLSTransport(load(certs, "web"))))
    assert (status, body) == (200, b"passed")


def test_filter_answers_403_naming_the_rule(certs):
    status, body = answer(exchange(intentions_site(), _TLSTransport(load(certs, "db"))))
    assert status == 403
    document = json.loads(body)
    assert document["error"] == "forbidden"
    assert document["identity"] == DB
    assert document["rule"] == f"rules[0] (deny {DB})"
    assert document["filter"] == "intentions"


def test_filter_without_certificate_sees_anonymous():
    status, body = answer(exchange(intentions_site(), _TLSTransport(None)))
    assert status == 403
    assert json.loads(body)["identity"] == "anonymous"
    assert json.loads(body)["rule"] == "default (deny)"
    status, _ = answer(exchange(intentions_site("allow"), StringTransport()))
    assert status == 200


def test_client_identity_is_on_the_context(certs):
    from infini_gateway.filters import Filter

    seen = []

    class Look(Filter):
        name = "look"

        def filter(self, ctx):
            seen.append(ctx.client_identity)

    exchange(make_site([Look({}, None)]), _TLSTransport(load(certs, "web")))
    exchange(make_site([Look({}, None)]), StringTransport())
    assert seen == [WEB, None]


# tcp entries: intentions after the handshake


def tcp_service(certs, tmp_path):
    from infini_gateway.service import GatewayService

    config = config_from_dict(
        {
            "entry": [
                {
                    "name": "db",
                    "protocol": "tcp",
                    "upstream": "db",
                    "network": {"binding": "127.0.0.1:0"},
                    "tls": {
                        "enabled": True,
                        "cert_file": str(certs / "gateway.crt"),
                        "key_file": str(certs / "gateway.key"),
                        "client_ca_file": str(certs / "ca.crt"),
                    },
                    "intentions": {"rules": [{"source": WEB, "action": "allow"}]},
                }
            ],
            "upstream": [{"name": "db", "endpoints": ["http://10.0.3.1:5432"]}],
            "path": {"data": str(tmp_path)},
        }
    )
    reactor = MemoryReactorClock()
    return GatewayService(config, reactor), reactor


@pytest.mark.parametrize("stem, forwarded", [("web", True), ("db", False), (None, False)])
def test_tcp_entry_applies_intentions_once_the_handshake_is_done(certs, tmp_path, stem, forwarded):
    service, reactor = tcp_service(certs, tmp_path)
    factory = service.entries["db"].site
    protocol = factory.buildProtocol(None)
    transport = _TLSTransport(
        load(certs, stem) if stem else None,
        peerAddress=IPv4Address("TCP", "192.0.2.1", 5000),
    )
    protocol.makeConnection(transport)
    # Nothing happens before the handshake.
    assert reactor.tcpClients == []
    protocol.handshakeCompleted()
    assert bool(reactor.tcpClients) is forwarded
    assert transport.disconnecting is not forwarded
    assert dict(factory.counters) == ({} if forwarded else {"denied": 1})


# TLS options


def entry_with(certs, **tls):
    return Entry(
        name="mtls",
        network=Network("127.0.0.1", 0),
        tls=EntryTLS(
            enabled=True,
            cert_file=str(certs / "gateway.crt"),
            key_file=str(certs / "gateway.key"),
            **tls,
        ),
    )


def test_client_ca_file_asks_for_a_certificate_required_by_default(certs, tmp_path):
    options = server_options(
        entry_with(certs, client_ca_file=str(certs / "ca.crt"), client_auth="required"),
        str(tmp_path),
    )
    assert options.verify and options.requireCertificate
    options.getContext()


def test_optional_client_auth_verifies_without_requiring(certs, tmp_path):
    options = server_options(
        entry_with(certs, client_ca_file=str(certs / "ca.crt"), client_auth="optional"),
        str(tmp_path),
    )
    assert options.verify and not options.requireCertificate


def test_without_client_ca_file_no_certificate_is_asked(certs, tmp_path):
    assert not server_options(entry_with(certs), str(tmp_path)).verify


@pytest.mark.parametrize("content", [None, b"not a certificate"])
def test_unusable_client_ca_file_is_one_line_naming_it(certs, tmp_path, content):
    path = tmp_path / "client-ca.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TLSConfigError) as raised:
        server_options(entry_with(certs, client_ca_file=str(path), client_auth="required"), str(tmp_path))
    assert "tls.client_ca_file" in str(raised.value) and str(path) in str(raised.value)


# Configuration


BASE = {"upstream": [{"name": "db", "endpoints": ["http://127.0.0.1:5432"]}]}


def problems(entry, **more):
    data = dict(BASE, entry=[dict({"name": "e", "network": {"binding": "127.0.0.1:0"}}, **entry)])
    data.update(more)
    try:
        config_from_dict(data)
    except ConfigError as e:
        return e.problems
    return []


def test_tcp_entry_intentions_need_client_certificates():
    found = problems(
        {"protocol": "tcp", "upstream": "db", "intentions": {"rules": [{"source": WEB, "action": "allow"}]}}
    )
    assert found == [
        (
            "<dict>: entry[0].intentions: expected tls.enabled and tls.client_ca_file too"
            " (without client certificates every client is anonymous)"
        )
    ]


def test_tcp_entry_needs_a_known_upstream():
    assert problems({"protocol": "tcp"}) == [
        "<dict>: entry[0]: expected upstream (protocol tcp forwards to one upstream)"
    ]
    (problem,) = problems({"protocol": "tcp", "upstream": "dv"})
    assert "entry[0].upstream: expected the name of an upstream, got 'dv'" in problem


def test_client_auth_needs_client_ca_file_and_tls():
    found = problems(
        {"tls": {"client_auth": "optional"}},
        router=[{"name": "default"}],
    )
    assert found == [
        (
            "<dict>: entry[0].tls.client_auth: expected client_ca_file too (the CAs client"
            " certificates are checked against)"
        )
    ]
    (problem,) = problems({"tls": {"client_ca_file": "ca.crt"}}, router=[{"name": "default"}])
    assert "expected tls.enabled: true too" in problem


def test_role_keys_belong_to_their_protocol():
    found = problems(
        {"upstream": "db", "sni_routes": {"default": "db"}, "client_hello_timeout": "1s"},
        router=[{"name": "default"}],
    )
    assert len(found) == 3
    assert all("only on an entry with protocol:" in p for p in found)


def test_intentions_filter_parameters_are_checked():
    data = dict(
        BASE,
        entry=[{"name": "e", "network": {"binding": "127.0.0.1:0"}}],
        router=[{"name": "default", "default_flow": "f"}],
        flow=[{"name": "f", "filter": [{"intentions": {"rules": [{"source": WEB, "action": "permit"}]}}]}],
    )
    with pytest.raises(ConfigError) as raised:
        config_from_dict(data)
    assert "allow or deny" in str(raised.value)
