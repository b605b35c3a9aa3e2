"""
C{basic_auth}: let on only requests with HTTP Basic credentials of one of
C{valid_users} (a map of user name to password), INFINI Gateway's filter of
that name.

Any other request is answered 401 with
C{WWW-Authenticate: Basic realm="<realm>", charset="UTF-8"} (C{realm}
defaults to C{infini-gateway}) and a JSON body, and the flow stops.
Credentials are read as UTF-8 (RFC 7617).  Passwords are compared in
constant time, as SHA-256 digests so that their lengths do not show either,
and an unknown user costs the same comparison as a known one.  INFINI
Gateway compares with C{==}.

The Authorization header is left on the request, for upstreams that check
it too.
"""

import binascii
import hashlib
import hmac
from base64 import b64decode
from typing import Optional, Tuple

from infini_gateway.filters import Filter, register

_REALM = r'^[^"\\\x00-\x1f\x7f]*$'
_NOBODY = hashlib.sha256(b"\x00no such user").digest()


def _digest(password: str) -> bytes:
    return hashlib.sha256(password.encode("utf-8")).digest()


def credentials(header: Optional[bytes]) -> Optional[Tuple[str, str]]:
    """The (user, password) of a Basic Authorization header, or None."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    if not colon:
        return None
    return user, password


@register
class BasicAuth(Filter):
    name = "basic_auth"
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["valid_users"],
        "properties": {
            "valid_users": {
                "type": "object",
                "minProperties": 1,
                "propertyNames": {
                    "pattern": "^[^:]*$",
                    "errorMessage": "a user name without ':'",
                },
                "additionalProperties": {"type": "string"},
            },
            "realm": {
                "type": "string",
                "pattern": _REALM,
                "errorMessage": "a realm without quotes, backslashes or controls",
            },
        },
    }

    def __init__(self, params, runtime):
        super().__init__(params, runtime)
        users = params.get("valid_users")
        if not users:
            raise ValueError("valid_users is empty: nobody could get in")
        for user in users:
            if ":" in user:
                raise ValueError(f"valid_users: user name {user!r} holds a ':'")
        self._users = {user: _digest(password) for user, password in users.items()}
        realm = params.get("realm", "infini-gateway")
        if any(c in '"\\' or ord(c) < 0x20 or ord(c) == 0x7F for c in realm):
            raise ValueError(
                f"realm {realm!r} holds a quote, a backslash or a control character"
            )
        self._challenge = f'Basic realm="{realm}", charset="UTF-8"'

    def filter(self, ctx):
        given = credentials(ctx.request.getHeader(b"authorization"))
        if given is not None:
            user, password = given
            expected = self._users.get(user)
            matches = hmac.compare_digest(
                _digest(password), _NOBODY if expected is None else expected
            )
            if matches and expected is not None:
                return
        ctx.response.set_header(b"WWW-Authenticate", self._challenge)
        ctx.answer_json(
            401, {"error": "unauthorized", "filter": self.name, "flow": ctx.flow}
        )
