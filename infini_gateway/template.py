"""
INFINI Gateway's C{$[[...]]} templates in filter parameters, compiled once
when the filter is built.

Variables (INFINI Gateway's spellings, see its "Request Context" page):

  - C{_ctx.request.path}, C{_ctx.request.method}, C{_ctx.request.host},
    C{_ctx.request.uri} (path and query string, as sent),
    C{_ctx.request.username} (HTTP basic auth),
    C{_ctx.request.query_args.NAME} (the first value),
    C{_ctx.request.header.NAME} (any case);
  - C{_ctx.remote_ip}, C{_ctx.remote_addr} (with the port),
    C{_ctx.local_ip}, C{_ctx.local_addr}, C{_ctx.tls} (C{true}/C{false});
    C{_ctx.request.client_ip} is the same as C{_ctx.remote_ip};
  - C{NAME}, a bare name: the variable of that name the router's pattern
    captured (C{/user/{user}} -> C{$[[user]]}), as INFINI Gateway names
    context values; empty when the rule that matched did not capture it.

A value that is missing renders as the empty string.  Any other C{_ctx.},
C{_sys.} or C{_util.} name, or a C{$[[} without C{]]}, is an error when the
filter is built, which the loader reports with the filter's location.
"""

import difflib
import re
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

from infini_gateway.context import RequestContext

OPEN, CLOSE = "$[[", "]]"

Getter = Callable[[RequestContext], str]
Escape = Callable[[str], str]

_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NAMED = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


def _request_host(ctx: RequestContext) -> str:
    host = ctx.request.getHeader(b"host")
    return "" if host is None else host.decode("latin-1")


def _username(ctx: RequestContext) -> str:
    user = ctx.request.getUser()
    return user.decode("utf-8", "replace") if user else ""


def _address(ctx: RequestContext, which: str, port: bool) -> str:
    address = getattr(ctx.request, which)()
    host = getattr(address, "host", "")
    if which == "getClientAddress":
        host = ctx.client_ip
    if not port:
        return host
    text = f"[{host}]" if ":" in host else host
    return f"{text}:{getattr(address, 'port', 0)}"


def _tls(ctx: RequestContext) -> str:
    return "true" if ctx.request.isSecure() else "false"


_FIXED = {
    "_ctx.request.path": lambda ctx: ctx.path,
    "_ctx.request.method": lambda ctx: ctx.method,
    "_ctx.request.host": _request_host,
    "_ctx.request.uri": lambda ctx: ctx.uri,
    "_ctx.request.username": _username,
    "_ctx.request.client_ip": lambda ctx: ctx.client_ip,
    "_ctx.remote_ip": lambda ctx: ctx.client_ip,
    "_ctx.remote_addr": lambda ctx: _address(ctx, "getClientAddress", True),
    "_ctx.local_ip": lambda ctx: _address(ctx, "getHost", False),
    "_ctx.local_addr": lambda ctx: _address(ctx, "getHost", True),
    "_ctx.tls": _tls,
}

_QUERY = "_ctx.request.query_args."
_HEADER = "_ctx.request.header."

KNOWN = tuple(_FIXED) + (_QUERY + "NAME", _HEADER + "NAME")


def _query_arg(name: str) -> Getter:
    key = name.encode("utf-8")

    def get(ctx: RequestContext) -> str:
        values = ctx.request.args.get(key)
        return values[0].decode("utf-8", "replace") if values else ""

    return get


def _header(name: str) -> Getter:
    key = name.encode("latin-1")

    def get(ctx: RequestContext) -> str:
        value = ctx.request.getHeader(key)
        return "" if value is None else value.decode("latin-1")

    return get


def _path_variable(name: str) -> Getter:
    def get(ctx: RequestContext) -> str:
        return ctx.vars.get(name, "")

    return get


def _getter(expression: str, text: str) -> Getter:
    name = expression.strip()
    if name in _FIXED:
        return _FIXED[name]
    for prefix, make in ((_QUERY, _query_arg), (_HEADER, _header)):
        if name.startswith(prefix):
            rest = name[len(prefix) :]
            if not _NAMED.match(rest):
                raise ValueError(
                    f"$[[{expression}]] in {text!r}: expected a name after {prefix}"
                )
            return make(rest)
    if _BARE.match(name) and name not in ("_ctx", "_sys", "_util"):
        return _path_variable(name)
    close = difflib.get_close_matches(name, _FIXED, n=1, cutoff=0.8)
    hint = f"did you mean {close[0]}? " if close else ""
    raise ValueError(
        f"unknown variable $[[{expression}]] in {text!r} ({hint}expected one of"
        f" {', '.join(KNOWN)}, or the name of a variable of the router's pattern)"
    )


def _parts(text: str) -> List[Union[str, Getter, tuple]]:
    parts: List[Any] = []
    position = 0
    while True:
        start = text.find(OPEN, position)
        if start < 0:
            break
        end = text.find(CLOSE, start + len(OPEN))
        if end < 0:
            raise ValueError(f"{OPEN} without {CLOSE} in {text!r}")
        if start > position:
            parts.append(text[position:start])
        expression = text[start + len(OPEN) : end]
        parts.append((expression.strip(), _getter(expression, text)))
        position = end + len(CLOSE)
    if position < len(text):
        parts.append(text[position:])
    return parts


def variables(text: str) -> List[str]:
    """
    The variables C{text} uses, as written (stripped), in order; bare
    names are the router's path variables.

    @raise ValueError: as L{Template} does.
    """
    return [part[0] for part in _parts(text) if isinstance(part, tuple)]


def path_variables(text: str) -> List[str]:
    """The bare names (the router's path variables) C{text} uses."""
    return [name for name in variables(text) if _BARE.match(name)]


class Template:
    """
    A compiled template.

    @ivar static: the text itself when it holds no variable (render it at no
        cost), else None.
    @ivar text: the template as written.
    """

    __slots__ = ("text", "static", "render")

    def __init__(self, text: str, escape: Optional[Escape] = None) -> None:
        """
        @param escape: applied to each variable's value (not to the literal
            text), to keep it fit for where it goes (a header, a URI).
        @raise ValueError: an unknown variable, or C{$[[} without C{]]}.
        """
        self.text = text
        parts = _parts(text)
        if not any(isinstance(part, tuple) for part in parts):
            self.static: Optional[str] = text
            self.render: Callable[[RequestContext], str] = lambda ctx: text
            return
        self.static = None
        self.render = _renderer(parts, escape)


def _renderer(
    parts: Sequence[Any], escape: Optional[Escape]
) -> Callable[[RequestContext], str]:
    getters: List[Any] = []
    for part in parts:
        if isinstance(part, str):
            getters.append(part)
        elif escape is None:
            getters.append(part[1])
        else:
            get = part[1]
            getters.append(lambda ctx, get=get: escape(get(ctx)))
    if len(getters) == 1:
        return getters[0]
    literal = [g if isinstance(g, str) else None for g in getters]

    def render(ctx: RequestContext) -> str:
        return "".join(
            text if text is not None else get(ctx) for text, get in zip(literal, getters)
        )

    return render


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_NOT_IN_URI = re.compile(r"[^!#$%&'()*+,\-./0-9:;=?@A-Z\[\]_a-z~]")


def _percent(match: "re.Match[str]") -> str:
    return "".join(f"%{byte:02X}" for byte in match.group(0).encode("utf-8"))


def escape_header(value: str) -> str:
    """A value fit for a header field: control characters percent-encoded."""
    return _CONTROL.sub(_percent, value)


def escape_uri(value: str) -> str:
    """
    A value fit for a URI (a Location header): every character a URI
    cannot hold as it is (controls, spaces, quotes, non-ASCII...)
    percent-encoded, as UTF-8.
    """
    return _NOT_IN_URI.sub(_percent, value)


def compile_header_values(
    headers: Sequence[Tuple[bytes, Sequence[bytes]]]
) -> List[Tuple[bytes, Callable[[RequestContext], List[bytes]]]]:
    """
    C{[(name, [value, ...]), ...]} from
    L{infini_gateway.filters._headers.parse_header_lines} with each value
    compiled as a template (escaped with L{escape_header}): C{[(name,
    values)]}, where C{values(ctx)} gives the values to set.
    """
    compiled = []
    for name, values in headers:
        templates = [Template(value.decode("utf-8"), escape_header) for value in values]
        if all(template.static is not None for template in templates):
            fixed = list(values)
            compiled.append((name, lambda ctx, fixed=fixed: list(fixed)))
        else:
            compiled.append((name, _header_renderer(templates)))
    return compiled


def _header_renderer(templates: Sequence[Template]) -> Callable[[RequestContext], List[bytes]]:
    def render(ctx: RequestContext) -> List[bytes]:
        return [
            template.render(ctx).encode("utf-8", "surrogateescape") for template in templates
        ]

    return render
