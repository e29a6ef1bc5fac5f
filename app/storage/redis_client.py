"""The Redis client of the worker and the CLI: connection from settings (one retry layer:
tenacity, in the store), the errors that mean Redis is away or refuses writes, and the
start-up access check (wrong credentials or certificate: one line, not endless retries)."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from nearline_rec.errors import StoreUnavailable
from nearline_rec.settings import RedisSettings

RETRYABLE = (RedisConnectionError, RedisTimeoutError, OSError)
"""Redis is away: retried with backoff (tenacity) in the store, then by the caller."""

# Errors Redis answers that no retry of the same write can fix until an operator acts:
# code -> what to do. The worker holds the batch and retries with backoff meanwhile.
REFUSALS = {
    "OOM": "Redis is at maxmemory with noeviction: raise maxmemory, choose an eviction policy"
    " (e.g. volatile-lru) or free memory",
    "READONLY": "NEARLINE_REDIS__URL points at a read-only replica: point it at the primary",
    "NOPERM": "the Redis ACL user (NEARLINE_REDIS__USERNAME) lacks a permission the worker"
    " needs: grant it",
    "WRONGTYPE": "a key under NEARLINE_REDIS__KEY_PREFIX holds a value of another type:"
    " delete it or choose another prefix",
    "MISCONF": "Redis refuses writes because it cannot persist (stop-writes-on-bgsave-error):"
    " fix its disk or persistence settings",
}
_REFUSAL_TYPES = {
    "OutOfMemoryError": "OOM",
    "ReadOnlyError": "READONLY",
    "NoPermissionError": "NOPERM",
}


class RedisRefused(StoreUnavailable):
    """Redis answered a write with an error no retry can fix until an operator acts."""

    def __init__(self, code: str, reply: str) -> None:
        super().__init__(f"{code}: {reply}")
        self.code = code
        self.reply = reply

    @property
    def advice(self) -> str:
        return REFUSALS[self.code]


def refusal(exc: BaseException) -> str | None:
    """The REFUSALS code of a Redis error reply, or None for any other error."""
    if not isinstance(exc, ResponseError):
        return None
    for cls in type(exc).__mro__:
        if cls.__name__ in _REFUSAL_TYPES:
            return _REFUSAL_TYPES[cls.__name__]
    head = str(exc).lstrip().split(" ", 1)[0].upper()
    return head if head in REFUSALS else None


UNAVAILABLE = (*RETRYABLE, RedisRefused)
"""What a background write (shared lists, item mirror, recompute) skips until next time."""


def split_cluster_flag(url: str) -> tuple[str, bool]:
    """`?cluster=true` on NEARLINE_REDIS__URL selects a Redis Cluster client (the URL names
    any one node); the flag is no connection option, so it comes off the URL."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    flags = [v for k, v in query if k == "cluster"]
    if not flags:
        return url, False
    rest = urlencode([(k, v) for k, v in query if k != "cluster"])
    on = flags[-1].lower() in ("1", "true", "yes", "on")
    return urlunsplit(parts._replace(query=rest)), on


def make_client(
    cfg: RedisSettings, *, pool_size: int | None = None, protocol: int | None = None
) -> Any:
    """An asyncio client. `pool_size`: at most that many connections, a command waiting for
    a free one (without it, one connection per concurrent command); `protocol`: RESP
    version (default: the client library's)."""
    # One retry layer only (tenacity); redis-py's own retries are switched off (a cluster
    # client keeps its own, which follow MOVED/ASK redirections).
    url, cluster = split_cluster_flag(cfg.url)
    kwargs: dict[str, Any] = {
        "username": cfg.username,
        "password": cfg.password.get_secret_value() if cfg.password else None,
        "socket_timeout": cfg.socket_timeout,
        "socket_connect_timeout": cfg.socket_timeout,
        "decode_responses": False,
    }
    if protocol is not None:
        kwargs["protocol"] = protocol
    if url.startswith("rediss://") and cfg.ssl_ca_certs:
        kwargs["ssl_ca_certs"] = cfg.ssl_ca_certs
    if cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(url, **kwargs)
    kwargs["retry"] = AsyncRetry(NoBackoff(), 0)
    if pool_size is not None:
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=pool_size, timeout=None, **kwargs
        )
        return aioredis.Redis(connection_pool=pool)
    return aioredis.Redis.from_url(url, **kwargs)


def check_access(cfg: RedisSettings) -> None:
    """PING once and raise SettingsError with one clear line when Redis refuses the
    credentials or the TLS handshake fails (the worker would otherwise retry them as an
    outage forever). A Redis that is merely down is left to the worker's retries."""
    from urllib.parse import urlsplit

    import redis

    from nearline_rec.settings import SettingsError

    url = split_cluster_flag(cfg.url)[0]  # one node answers PING for the whole cluster
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or 6379}"  # never the URL: it may hold a password
    kwargs: dict[str, Any] = {
        "username": cfg.username,
        "password": cfg.password.get_secret_value() if cfg.password else None,
        "socket_timeout": cfg.socket_timeout,
        "socket_connect_timeout": cfg.socket_timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    if url.startswith("rediss://") and cfg.ssl_ca_certs:
        kwargs["ssl_ca_certs"] = cfg.ssl_ca_certs
    client = redis.Redis.from_url(url, **kwargs)
    user = cfg.username or parts.username or "default"
    try:
        client.ping()
    except (redis.AuthenticationError, redis.ResponseError) as exc:
        msg = " ".join(str(exc).split())
        if cfg.password is None and parts.password is None:
            raise SettingsError(
                f"Redis at {where} requires a login; set NEARLINE_REDIS__USERNAME and "
                "NEARLINE_REDIS__PASSWORD"
            ) from None
        if isinstance(exc, redis.AuthenticationError) or msg.startswith(
            ("NOAUTH", "WRONGPASS", "NOPERM", "invalid username")
        ):
            raise SettingsError(
                f"Redis at {where} refused user {user!r}: {msg}; check "
                "NEARLINE_REDIS__USERNAME and NEARLINE_REDIS__PASSWORD"
            ) from None
        raise
    except RedisConnectionError as exc:
        msg = " ".join(str(exc).split())
        if "SSL" in msg or "TLS" in msg or "certificate" in msg:
            raise SettingsError(
                f"TLS handshake with Redis at {where} failed: {msg}; check NEARLINE_REDIS__URL "
                "(rediss://) and NEARLINE_REDIS__SSL_CA_CERTS"
            ) from None
    except (RedisTimeoutError, OSError):
        pass
    finally:
        client.close()
