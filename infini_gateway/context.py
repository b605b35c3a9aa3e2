"""
The request context a flow's filters share.

A filter reads the request through the context, edits the request headers in
place, and builds the answer in L{ResponseDraft}.  A filter that answers calls
L{RequestContext.answer} (or L{RequestContext.stop}); the rest of the flow is
then skipped.  A filter that streams the answer itself (the proxy) writes to
C{ctx.request} and marks the draft L{ResponseDraft.sent}.
"""

import json
from typing import Any, Dict, List, Optional, Tuple, Union

from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

_JSON = b"application/json"


def client_ip(request: IRequest) -> str:
    """
    The peer's address as text, C{::ffff:a.b.c.d} mapped back to
    C{a.b.c.d}, or C{""} for a peer that has no IP address.
    """
    peer = request.getClientAddress()
    host = getattr(peer, "host", "")
    if host.startswith("::ffff:") and "." in host:
        return host[len("::ffff:") :]
    return host


class ResponseDraft:
    """
    The answer the flow is building: status, headers and body parts.  It is
    written to the client once the flow ends, unless a filter already sent
    the answer itself.
    """

    def __init__(self) -> None:
        self.status = 200
        self.headers: List[Tuple[bytes, bytes]] = []
        self.body: List[bytes] = []
        self.sent = False

    def set_header(self, name: Union[str, bytes], value: Union[str, bytes]) -> None:
        """Replace every header called C{name} by one with C{value}."""
        name = _bytes(name)
        lower = name.lower()
        self.headers = [(n, v) for n, v in self.headers if n.lower() != lower]
        self.headers.append((name, _bytes(value)))

    def add_header(self, name: Union[str, bytes], value: Union[str, bytes]) -> None:
        self.headers.append((_bytes(name), _bytes(value)))

    def get_header(self, name: Union[str, bytes]) -> Optional[bytes]:
        lower = _bytes(name).lower()
        for n, v in reversed(self.headers):
            if n.lower() == lower:
                return v
        return None

    def apply_headers(self, headers: Headers) -> None:
        """
        Write the draft's headers over C{headers}, the headers of an answer
        a filter streams itself (say, an upstream's, already copied): each
        header name the draft holds replaces that name's values there, so a
        header the flow set (C{set_response_header}) wins.
        """
        grouped: Dict[bytes, Tuple[bytes, List[bytes]]] = {}
        for name, value in self.headers:
            grouped.setdefault(name.lower(), (name, []))[1].append(value)
        for name, values in grouped.values():
            headers.setRawHeaders(name, values)


class RequestContext:
    """
    Everything a filter may look at or change while a request passes a flow.

    @ivar request: the twisted.web request.
    @ivar reactor: the gateway's reactor.
    @ivar vars: variables captured by the router's pattern (C{{name}}).
    @ivar response: the L{ResponseDraft}.
    @ivar stopped: a filter answered; no further filter runs.
    @ivar flow: the name of the flow now running, for logs and errors.
    @ivar filter: the name of the filter now running.
    @ivar started: when the router took the request (reactor seconds).
    @ivar rule: a description of the router rule that matched (None for
        the default flow or no match), for the tracing flow and logs.
    @ivar flow_name: the name of the flow (or flows) the router chose.
    """

    def __init__(
        self,
        request: IRequest,
        reactor: Any,
        vars: Optional[Dict[str, str]] = None,
    ) -> None:
        self.request = request
        self.reactor = reactor
        self.vars = vars if vars is not None else {}
        self.response = ResponseDraft()
        self.stopped = False
        self.flow: Optional[str] = None
        self.filter: Optional[str] = None
        self.started: float = reactor.seconds() if reactor is not None else 0.0
        self.rule: Optional[str] = None
        self.flow_name: Optional[str] = None

    @property
    def method(self) -> str:
        return self.request.method.decode("latin-1")

    @property
    def path(self) -> str:
        """The request path without the query string, as sent."""
        return self.request.path.decode("latin-1")

    @property
    def uri(self) -> str:
        return self.request.uri.decode("latin-1")

    @property
    def client_ip(self) -> str:
        return client_ip(self.request)

    @property
    def client_identity(self) -> Optional[str]:
        """
        The identity of the client's verified certificate (on an entry with
        C{tls.client_ca_file}): its URI SAN, else DNS SAN, else CN; None
        when it sent none (intentions call that C{anonymous}).
        """
        try:
            return self._client_identity
        except AttributeError:
            from infini_gateway.identity import request_identity

            self._client_identity: Optional[str] = request_identity(self.request)
            return self._client_identity

    def header(self, name: str) -> Optional[str]:
        value = self.request.getHeader(name)
        return None if value is None else value.decode("latin-1")

    def stop(self) -> None:
        """Skip the rest of the flow; the draft is sent as it is."""
        self.stopped = True

    def answer(
        self,
        status: int,
        body: Union[str, bytes] = b"",
        content_type: Union[str, bytes, None] = None,
    ) -> None:
        """Replace the draft by this answer and stop the flow."""
        self.response.status = status
        self.response.body = [_bytes(body)] if body else []
        if content_type is not None:
            self.response.set_header(b"Content-Type", content_type)
        self.stop()

    def answer_json(self, status: int, document: Any) -> None:
        """Answer with C{document} as a JSON body and stop the flow."""
        self.answer(status, json_body(document), _JSON)


def json_body(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True).encode("utf-8") + b"\n"


def _bytes(value: Union[str, bytes]) -> bytes:
    if isinstance(value, bytes):
        return value
    return value.encode("utf-8")
