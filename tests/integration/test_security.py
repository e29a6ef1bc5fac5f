"""Authenticated and encrypted connections, configured only through settings.

- Redis with an ACL user and password (own redis-server, default user disabled);
- Kafka over SASL/PLAIN, and SASL over TLS, on listeners of an own broker
  (scripts/services.sh NEARLINE_KAFKA_SASL_PORT / NEARLINE_KAFKA_SASL_SSL_PORT);
- Redis over TLS (own redis-server --tls-port), with a throwaway CA made by openssl;
- the HTTP endpoints: loopback by default, a bearer token when NEARLINE_SERVE__TOKEN is set.

Every worker here runs at log level debug, and no password or token may appear in its
log, in /status/, /metrics, /health or any error message. Wrong credentials and an
unknown certificate authority stop `nearline worker` at once with one clear line. A secret
sent in cleartext (a Redis password over redis://, SASL PLAIN without TLS) is named in one
warning at start, and none is logged over TLS. Faust's own /table/ and /router/ endpoints
are refused unless turned on.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nearline_rec.core.events import UserEvent
from nearline_rec.producer import produce_events
from nearline_rec.storage.codes import read_users_sync
from nearline_rec.tools.localrun import WorkerProcess, settings_for
from tests.integration.conftest import REPO, redis_client, run_env
from tests.integration.faults import (
    T0,
    OwnKafka,
    OwnRedis,
    ThrowawayCA,
    catalog_on,
    http_get,
    survived,
)
from tests.reliability_report import report

pytestmark = pytest.mark.integration


def _secret(tag: str) -> str:
    return f"{tag}-{secrets.token_hex(8)}"


@pytest.fixture
def debug_workers(tmp_path: Path) -> Iterator:
    """Worker processes at log level debug (the chattiest, where secrets leak first)."""
    started: list[WorkerProcess] = []

    def make(env: dict[str, str], name: str = "worker") -> WorkerProcess:
        w = WorkerProcess(env, tmp_path, name, loglevel="debug")
        started.append(w)
        return w.start()

    yield make
    for w in started:
        w.stop(timeout=20)


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> ThrowawayCA:
    return ThrowawayCA.make(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory, ca) -> Iterator[tuple[OwnKafka, dict[str, int], str]]:
    """An own broker with SASL_PLAINTEXT and SASL_SSL listeners (PLAIN), user `nearline`."""
    from nearline_rec.tools.localrun import free_port

    password = _secret("kafka-pw")
    ports = {"sasl": free_port(), "sasl_ssl": free_port()}
    kafka = OwnKafka(
        tmp_path_factory.mktemp("kafka"),
        NEARLINE_KAFKA_SASL_PORT=str(ports["sasl"]),
        NEARLINE_KAFKA_SASL_SSL_PORT=str(ports["sasl_ssl"]),
        NEARLINE_KAFKA_SASL_USERS=f"nearline:{password},other:other-pw",
        NEARLINE_KAFKA_SSL_PEM=str(ca.server_bundle),
    )
    kafka.start()
    yield kafka, ports, password
    kafka.stop()


def _cli_worker(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """`nearline worker` as an operator runs it; expected to stop at once here."""
    return subprocess.run(
        [sys.executable, "-m", "nearline_rec.tools.cli", "worker"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _assert_clear_refusal(res: subprocess.CompletedProcess, *fragments: str, secret: str) -> str:
    assert res.returncode != 0, res.stdout + res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: "), lines[0]
    for f in fragments:
        assert f in lines[0], lines[0]
    assert secret not in res.stdout + res.stderr
    return lines[0]


def _no_secret_anywhere(
    w: WorkerProcess, secrets_: list[str], token: str | None = None
) -> dict[str, int]:
    """Occurrences of the secrets in the worker's log and every page, by place (checked
    to be none)."""
    texts = {"log": w.log_path.read_text(errors="replace")}
    for path in ("/status/", "/metrics", "/health", "/status/history/"):
        texts[path] = http_get(w.port, path, token)[1]
    texts["401"] = http_get(w.port, "/status/")[1]
    found = {where: sum(text.count(s) for s in secrets_) for where, text in texts.items()}
    assert all(text for text in texts.values()), [k for k, v in texts.items() if not v]
    for where, n in found.items():
        assert n == 0, f"secret found in {where}"
    return found


def _listener(s) -> str:
    """The Kafka listener the worker was configured for, as `protocol/mechanism`."""
    return f"{s.kafka.security_protocol}/{s.kafka.sasl_mechanism}"


def _cleartext_warnings(w: WorkerProcess) -> list[str]:
    """The settings named by the worker's start warnings about secrets sent in cleartext."""
    lines = w.log_path.read_text(errors="replace").splitlines()
    found = [line for line in lines if "travels in cleartext" in line]
    assert all("WARNING" in line for line in found), found
    return [line.split(" travels in cleartext")[0].split()[-1] for line in found]


def _produce_and_wait(run, w: WorkerProcess, users: int = 4) -> None:
    items = sorted(run.truth["items"])
    events = [
        UserEvent(f"sec-{u}-{i}", f"sec-user-{u}", items[(u * 5 + i) % len(items)], "like", T0 + i)
        for u in range(users)
        for i in range(5)
    ]
    produce_events(run.settings, events)
    w.wait(lambda st: st["counters"].get("lists_written", 0) >= users, 60, "lists written")


def _listening_addresses(port: int) -> set[str]:
    """Addresses with a TCP socket listening on `port` (from /proc/net/tcp and tcp6)."""
    import ipaddress

    addrs: set[str] = set()
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            hex_addr, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A = LISTEN
                continue
            raw = bytes.fromhex(hex_addr)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, size, 4))
            ip = ipaddress.ip_address(raw)
            mapped = getattr(ip, "ipv4_mapped", None)
            addrs.add(str(mapped or ip))
    return addrs


def test_redis_acl_user_http_token_loopback_and_no_secret_leaks(
    catalog_run, debug_workers, tmp_path
):
    password, token = _secret("redis-pw"), _secret("http-token")
    acl = ["--user", "default", "off",
           "--user", "nearline", "on", f">{password}", "~*", "&*", "+@all"]  # fmt: skip
    own = OwnRedis(tmp_path, persistent=False, extra=acl).start()
    try:
        env = {
            **catalog_run.env,
            "NEARLINE_REDIS__URL": own.url,  # no credentials in the URL: settings only
            "NEARLINE_REDIS__USERNAME": "nearline",
            "NEARLINE_REDIS__PASSWORD": password,
            "NEARLINE_SERVE__TOKEN": token,
        }
        w = debug_workers(env)
        # /status/ wants the token now
        w.status = lambda: json.loads(http_get(w.port, "/status/", token)[1] or "null")
        w.wait_ready()
        _produce_and_wait(catalog_run, w)

        import redis

        r = redis.Redis.from_url(own.url, username="nearline", password=password)
        prefix = catalog_run.settings.redis.key_prefix
        assert read_users_sync(r, prefix, ["sec-user-0"])["sec-user-0"] is not None
        with pytest.raises(redis.exceptions.RedisError) as default_user:
            redis.Redis.from_url(own.url).get("x")  # the default user is off

        # HTTP: every endpoint but /health wants the token; the server is on loopback only
        statuses = {}
        for path in ("/status/", "/metrics", "/recommendations/sec-user-0/", "/status/page/"):
            statuses[path] = (http_get(w.port, path)[0], http_get(w.port, path, token)[0])
            assert statuses[path] == (401, 200), (path, statuses[path])
        assert http_get(w.port, "/status/", "wrong-token")[0] == 401
        assert http_get(w.port, "/health")[0] in (200, 503)  # open, for probes
        bound = _listening_addresses(w.port)
        assert bound == {"127.0.0.1"}
        # AUTH goes over redis:// in cleartext: said once at start; the token is on loopback
        assert _cleartext_warnings(w) == ["NEARLINE_REDIS__PASSWORD"]

        leaks = _no_secret_anywhere(w, [password, token], token)
        st = w.status()
        alive = survived(w)

        # Wrong password: one clear line at start, naming the settings, not the password.
        wrong = _secret("wrong-pw")
        line = _assert_clear_refusal(
            _cli_worker({**env, "NEARLINE_REDIS__PASSWORD": wrong}),
            "refused user 'nearline'",
            "NEARLINE_REDIS__PASSWORD",
            secret=wrong,
        )
        missing = _assert_clear_refusal(
            _cli_worker({k: v for k, v in env.items() if not k.startswith("NEARLINE_REDIS__USER")
                         and k != "NEARLINE_REDIS__PASSWORD"}),
            "requires a login",
            secret=password,
        )  # fmt: skip
    finally:
        own.stop()
    report(
        "security_redis_acl_http_token",
        lists_written_as_acl_user=st["counters"]["lists_written"],
        default_user_refused=type(default_user.value).__name__,
        wrong_password_message=line,
        no_credentials_message=missing,
        http_401_without_token=sorted(statuses),
        web_bind=sorted(bound),
        places_searched_for_secrets=sorted(leaks),
        secrets_in_logs_status_metrics=sum(leaks.values()),
        **alive,
    )


def test_kafka_sasl_plain_listener(secure_kafka, run_id, debug_workers, tmp_path):
    kafka, ports, password = secure_kafka
    plain_env = {**run_env(run_id), "NEARLINE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap}
    run = catalog_on(plain_env, tmp_path)  # topics and items through the admin listener
    env = {
        **plain_env,
        "NEARLINE_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{ports['sasl']}",
        "NEARLINE_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "NEARLINE_KAFKA__SASL_MECHANISM": "PLAIN",
        "NEARLINE_KAFKA__SASL_USERNAME": "nearline",
        "NEARLINE_KAFKA__SASL_PASSWORD": password,
    }
    run.settings = settings_for(env)  # events are produced over SASL too
    w = debug_workers(env)
    w.wait_ready()
    _produce_and_wait(run, w)
    stored = read_users_sync(redis_client(), run.settings.redis.key_prefix, ["sec-user-1"])
    assert stored["sec-user-1"] is not None
    assert _cleartext_warnings(w) == ["NEARLINE_KAFKA__SASL_PASSWORD"]  # PLAIN, no TLS
    leaks = _no_secret_anywhere(w, [password])
    st = w.status()
    alive = survived(w)

    wrong = _secret("wrong-pw")
    t0 = time.monotonic()
    line = _assert_clear_refusal(
        _cli_worker({**env, "NEARLINE_KAFKA__SASL_PASSWORD": wrong}),
        "refused SASL user 'nearline'",
        "NEARLINE_KAFKA__SASL_PASSWORD",
        secret=wrong,
    )
    refused_s = time.monotonic() - t0
    report(
        "security_kafka_sasl",
        listener=_listener(run.settings),
        lists_written=st["counters"]["lists_written"],
        wrong_password_message=line,
        wrong_password_exit_s=round(refused_s, 1),
        places_searched_for_secrets=sorted(leaks),
        secrets_in_logs_status_metrics=sum(leaks.values()),
        **alive,
    )


def test_kafka_sasl_over_tls_and_redis_over_tls(secure_kafka, ca, run_id, debug_workers, tmp_path):
    kafka, ports, password = secure_kafka
    own = OwnRedis(tmp_path, persistent=False, tls=ca).start()
    try:
        plain_env = {**run_env(run_id), "NEARLINE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap}
        run = catalog_on(plain_env, tmp_path)
        env = {
            **plain_env,
            "NEARLINE_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{ports['sasl_ssl']}",
            "NEARLINE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "NEARLINE_KAFKA__SASL_USERNAME": "nearline",
            "NEARLINE_KAFKA__SASL_PASSWORD": password,
            "NEARLINE_KAFKA__SSL_CAFILE": str(ca.ca),
            "NEARLINE_REDIS__URL": own.url,  # rediss://
            "NEARLINE_REDIS__SSL_CA_CERTS": str(ca.ca),
        }
        run.settings = settings_for(env)
        w = debug_workers(env)
        w.wait_ready()
        _produce_and_wait(run, w)
        import redis

        r = redis.Redis.from_url(own.url, ssl_ca_certs=str(ca.ca))
        prefix = run.settings.redis.key_prefix
        assert read_users_sync(r, prefix, ["sec-user-2"])["sec-user-2"] is not None
        assert _cleartext_warnings(w) == []  # SASL over TLS, rediss://
        leaks = _no_secret_anywhere(w, [password])
        st = w.status()
        alive = survived(w)

        # A CA that did not sign the servers' certificates: both refused, one line each.
        stranger = ThrowawayCA.make(tmp_path / "other-ca", name="some-other-ca")
        kafka_line = _assert_clear_refusal(
            _cli_worker({**env, "NEARLINE_KAFKA__SSL_CAFILE": str(stranger.ca)}),
            "TLS handshake with Kafka",
            "CERTIFICATE_VERIFY_FAILED",
            secret=password,
        )
        redis_line = _assert_clear_refusal(
            _cli_worker({**env, "NEARLINE_REDIS__SSL_CA_CERTS": str(stranger.ca)}),
            "TLS handshake with Redis",
            secret=password,
        )
    finally:
        own.stop()
    report(
        "security_tls",
        kafka_listener=_listener(run.settings),
        redis_url_scheme=run.settings.redis.url.split(":", 1)[0],
        lists_written=st["counters"]["lists_written"],
        untrusted_ca_kafka_message=kafka_line,
        untrusted_ca_redis_message=redis_line,
        places_searched_for_secrets=sorted(leaks),
        secrets_in_logs_status_metrics=sum(leaks.values()),
        **alive,
    )


FAUST_PATHS = ("/table/", "/table/user-state/", "/table/user-state/u1/", "/router/",
               "/router/user-state/")  # fmt: skip


def test_faust_table_and_router_endpoints_refused_unless_enabled(catalog_run, debug_workers):
    """Faust serves its tables' contents at /table/ and the workers' URLs at /router/, with
    no token check, and turns both on by default. Here they are off: each such path is the
    worker's own 404, even with Faust's APP_WEB_TABLES_ENABLED / APP_WEB_ROUTER_ENABLED
    set. NEARLINE_WORKER__FAUST_WEB_ENDPOINTS=true turns them on (a second worker), which
    shows these requests reach Faust's views when they exist. Failed with the switch
    reverted (create_app without web_tables_enabled / web_router_enabled): 200 and the
    table list at /table/, as before the switch: the worker's 404 catch-all never hid them,
    aiohttp matching the longest path prefix first."""
    faust_env = {"APP_WEB_TABLES_ENABLED": "true", "APP_WEB_ROUTER_ENABLED": "true"}
    w = debug_workers({**catalog_run.env, **faust_env}, name="faust-web-off")
    w.wait_ready()
    refused = {}
    for path in FAUST_PATHS:
        status, body = http_get(w.port, path)
        refused[path] = status
        assert status == 404, (path, status, body[:300])
        assert json.loads(body)["error"] == f"no such endpoint: {path}"
    w.stop(timeout=20)

    on = debug_workers(
        {**catalog_run.env, "NEARLINE_WORKER__FAUST_WEB_ENDPOINTS": "true"}, name="faust-web-on"
    )
    on.wait_ready()
    status, body = http_get(on.port, "/table/")
    assert status == 200 and "user-state" in body, (status, body[:300])
    assert http_get(on.port, "/router/")[0] == 200
    assert http_get(on.port, "/table/user-state/")[0] == 200
    report(
        "security_faust_web_endpoints",
        off_by_default=refused,
        enabled_table_list=http_get(on.port, "/table/")[0],
    )
