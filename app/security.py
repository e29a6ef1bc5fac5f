"""Secrets kept out of printed text: passwords inside URLs masked."""

from __future__ import annotations

import re

MASK = "***"

# where a URL starts: a scheme at the start of the text or after a separator
_URL_START = re.compile(r"""(?:^|(?<=[\s,;"'\[(=]))[A-Za-z][A-Za-z0-9+.-]*://""")
# query parameters that carry a credential (redis-py passes ?password= on to AUTH)
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|auth|api_?key|credential", re.IGNORECASE)
_PARAM = re.compile(r"(?P<key>[^?&=#\s]+)=(?P<value>[^&#\s]*)")


def _mask_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    # The userinfo ends at the last '@' before the next URL, so a password with an unescaped
    # '@', '/' or space is masked whole (a URL parser would cut it short and show its tail);
    # text after a URL may be masked too, which costs nothing but a host name.
    at = rest.rfind("@")
    if at >= 0:
        user, colon, _password = rest[:at].partition(":")
        rest = (f"{user}:{MASK}" if colon else rest[:at]) + rest[at:]
    head, q, query = rest.partition("?")
    if q:
        query = _PARAM.sub(
            lambda m: f"{m['key']}={MASK}" if _SECRET_PARAM.search(m["key"]) else m[0], query
        )
    return f"{scheme}{sep}{head}{q}{query}"


def mask_secrets(text: str) -> str:
    """`text` with the password of every URL in it (user:password@, ?password=) masked."""
    starts = [m.start() for m in _URL_START.finditer(text)]
    if not starts:
        return text
    ends = [*starts[1:], len(text)]
    return text[: starts[0]] + "".join(
        _mask_url(text[a:b]) for a, b in zip(starts, ends, strict=True)
    )
