"""Secrets kept out of printed text, and which secrets the settings send in cleartext."""

from __future__ import annotations

import hmac
import ipaddress
import re
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

if TYPE_CHECKING:
    from pydantic import SecretStr

    from nearline_rec.settings import Settings

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


def token_ok(token: SecretStr, authorization: str, query_token: str | None = None) -> bool:
    """The request carries the bearer token (`Authorization: Bearer <token>`, or the token
    itself as `query_token`); compared in constant time."""
    expected = token.get_secret_value().encode()
    if hmac.compare_digest(authorization.encode(), b"Bearer " + expected):
        return True
    return query_token is not None and hmac.compare_digest(query_token.encode(), expected)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cleartext_secrets(settings: Settings) -> list[str]:
    """One line per secret the settings send over an unencrypted connection, saying what
    to do about it (logged as a warning when the worker starts)."""
    found: list[str] = []
    k = settings.kafka
    if k.security_protocol == "SASL_PLAINTEXT" and k.sasl_mechanism == "PLAIN":
        found.append(
            "NEARLINE_KAFKA__SASL_PASSWORD travels in cleartext (SASL PLAIN over"
            " SASL_PLAINTEXT): use NEARLINE_KAFKA__SECURITY_PROTOCOL=SASL_SSL, or a SCRAM"
            " mechanism if the broker has no TLS listener"
        )
    r = settings.redis
    parts = urlsplit(r.url)
    in_url = parts.password is not None or any(
        _SECRET_PARAM.search(key) for key, _ in parse_qsl(parts.query, keep_blank_values=True)
    )
    if parts.scheme == "redis" and (r.password is not None or in_url):
        name = "NEARLINE_REDIS__PASSWORD" if r.password else "the password in NEARLINE_REDIS__URL"
        found.append(
            f"{name} travels in cleartext (redis://, no TLS): use a rediss:// URL with"
            " NEARLINE_REDIS__SSL_CA_CERTS"
        )
    w = settings.worker
    if settings.serve.token is not None and not _is_loopback(w.web_host):
        found.append(
            "NEARLINE_SERVE__TOKEN travels in cleartext: the worker serves plain HTTP on"
            f" {w.web_host}:{w.web_port}; put a TLS proxy in front and set"
            " NEARLINE_WORKER__WEB_HOST=127.0.0.1 so only the proxy reaches the worker"
        )
    return found


def serve_cleartext_token(settings: Settings) -> str | None:
    """The warning `nearline serve` logs when its token travels in cleartext."""
    s = settings.serve
    if s.token is None or _is_loopback(s.host):
        return None
    return (
        "NEARLINE_SERVE__TOKEN travels in cleartext: nearline serve speaks plain HTTP on"
        f" {s.host}:{s.port}; put a TLS proxy or load balancer in front"
    )
