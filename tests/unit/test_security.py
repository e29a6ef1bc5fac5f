"""Security edges that need no services (tests/integration/test_security.py runs workers)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from aiohttp.test_utils import make_mocked_request
from click.testing import CliRunner

from nearline_rec.faust_app import create_app
from nearline_rec.security import cleartext_secrets, mask_secrets
from nearline_rec.settings import ENV_PREFIX, SettingsError, load_settings
from nearline_rec.tools.cli import main
from tests.unit.test_cli import REPO


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("redis://nearline:s3cret@10.0.0.5:6379/0", "redis://nearline:***@10.0.0.5:6379/0"),
        ("rediss://:s3cret@host/0?cluster=true", "rediss://:***@host/0?cluster=true"),
        ("redis://host/0?password=s3cret&db=1", "redis://host/0?password=***&db=1"),
        ("http://h/x?token=s3cret#frag", "http://h/x?token=***#frag"),
        # an unescaped '@', '/' or space in the password: masked whole, not cut at it
        ("redis://u:s3c@r/e t@host/0", "redis://u:***@host/0"),
        ("redis://u:s3cret@h1,redis://v:s3cret@h2", "redis://u:***@h1,redis://v:***@h2"),
        ("error: 'http://u:s3cret@h' must start", "error: 'http://u:***@h' must start"),
        # no password: unchanged
        ("redis://nearline@host:6379/0", "redis://nearline@host:6379/0"),
        ("127.0.0.1:9092,10.0.0.2:9092", "127.0.0.1:9092,10.0.0.2:9092"),
        ("memory://", "memory://"),
    ],
)
def test_mask_secrets_hides_url_passwords(text, masked):
    assert mask_secrets(text) == masked
    assert "s3c" not in mask_secrets(text)


SECRETS = {
    "NEARLINE_REDIS__PASSWORD": "redis-pw-8f1",
    "nearline_kafka__sasl_password": "kafka-pw-2c7",  # names are case-insensitive
    "NEARLINE_SERVE__TOKEN": "http-token-5d3",
    "NEARLINE_REDIS__URL": "redis://nearline:url-pw-9a4@10.0.0.5:6379/0?password=query-pw-1e6",
    "NEARLINE_WORKER__STORE": "rocksdb://admin:store-pw-7b2@db/",
}


def test_settings_command_prints_no_secret(monkeypatch):
    """Every SecretStr setting as ***, and the password of any URL-ish setting masked.
    Failed before: `nearline settings` printed the environment as given."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    out = CliRunner().invoke(main, ["settings"]).output
    for secret in ("redis-pw", "kafka-pw", "http-token", "url-pw", "query-pw", "store-pw"):
        assert secret not in out, f"{secret} printed"
    lines = dict(line.split("  # ")[0].split("=", 1) for line in out.splitlines())
    assert lines["NEARLINE_REDIS__PASSWORD"] == "***"
    assert lines["NEARLINE_KAFKA__SASL_PASSWORD"] == "***"
    assert lines["NEARLINE_SERVE__TOKEN"] == "***"
    assert lines["NEARLINE_REDIS__URL"] == "redis://nearline:***@10.0.0.5:6379/0?password=***"
    assert lines["NEARLINE_WORKER__STORE"] == "rocksdb://admin:***@db/"
    assert lines["NEARLINE_KAFKA__SASL_USERNAME"] == "None"  # unset: the default
    markdown = CliRunner().invoke(main, ["settings", "--markdown"]).output
    assert not any(s in markdown for s in SECRETS.values())


def test_invalid_url_setting_names_the_variable_not_the_password(monkeypatch):
    """Failed before: the URL validator's message quoted the URL, password included."""
    monkeypatch.setenv("NEARLINE_REDIS__URL", "http://nearline:url-pw-9a4@10.0.0.5/0")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "NEARLINE_REDIS__URL" in str(info.value)
    assert "url-pw" not in str(info.value) and "nearline:***@" in str(info.value)


def _nearline(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    return subprocess.run(
        [sys.executable, "-m", "nearline_rec.tools.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**full, **env},
        timeout=60,
    )


@pytest.mark.parametrize("cluster", ["", "?cluster=true"])
def test_no_command_prints_redis_retry_warning(cluster):
    """`nearline recs` builds the async Redis client (then fails to connect: nothing
    listens on port 1); `nearline settings` builds none. Neither prints a warning, and the
    failure is one line. Fails with the async client given redis.retry.Retry again (as
    before 195dd40: redis-py's "synchronous Retry" warning); the cluster case failed
    with a traceback before RedisClusterException became an expected error."""
    url = f"redis://127.0.0.1:1/0{cluster}"
    res = _nearline("recs", "nobody", NEARLINE_REDIS__URL=url)
    assert res.returncode == 1
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert "Retry" not in res.stderr and "Warning" not in res.stderr
    res = _nearline("settings", NEARLINE_REDIS__URL=url)
    assert res.returncode == 0 and res.stderr == "", res.stderr


def _route_of(app, path: str) -> str:
    """The route pattern that answers GET `path` on the app's web server."""
    import asyncio

    match = asyncio.run(app.web.web_app.router.resolve(make_mocked_request("GET", path)))
    return match.route.resource.canonical


def _app_with_catch_all(monkeypatch, app_id: str, **worker: object):
    monkeypatch.setenv("APP_WEB_TABLES_ENABLED", "true")  # Faust's own variables ...
    monkeypatch.setenv("APP_WEB_ROUTER_ENABLED", "true")  # ... must not turn them on
    app = create_app(load_settings(worker={"app_id": app_id, **worker}))

    @app.page(
        "/{tail:.*}"
    )  # as nearline_rec.agents.views does, before Faust's blueprints are applied
    async def not_found(web, request, tail):
        return web.json({"error": "no such endpoint"}, status=404)

    app.web.init_server()
    return app


def test_faust_table_and_router_endpoints_are_off_unless_enabled(monkeypatch):
    """Fails with create_app not passing web_tables_enabled / web_router_enabled, or not
    dropping Faust's APP_WEB_* variables: the blueprints are on and answer /table/."""
    app = _app_with_catch_all(monkeypatch, "t-faust-web-off")
    enabled = {bp for _, bp in app.web.blueprints._enabled}
    assert not {"faust.web.apps.tables.blueprint", "faust.web.apps.router:blueprint"} & enabled
    for path in ("/table/", "/table/user-state/", "/router/", "/router/user-state/k/"):
        assert _route_of(app, path) == "/{tail}", path  # the catch-all: 404

    on = _app_with_catch_all(monkeypatch, "t-faust-web-on", faust_web_endpoints=True)
    # turned on, they answer: aiohttp tries the longest path prefix first, so the
    # catch-all, though added first, never hid them (Faust served its tables before)
    assert _route_of(on, "/table/") == "/table/"
    assert _route_of(on, "/table/user-state/") == "/table/{name}/"
    assert _route_of(on, "/router/") == "/router/"
    assert _route_of(on, "/nothing-here") == "/{tail}"


def _cleartext(**sections: dict) -> list[str]:
    return cleartext_secrets(load_settings(**sections))


def test_cleartext_secrets_name_the_setting_and_what_to_do():
    """The rule behind the start warning (the worker logging it is checked in
    tests/integration/test_security.py); no line holds a secret's value."""
    sasl = {"sasl_username": "u", "sasl_password": "kafka-pw-2c7"}
    [line] = _cleartext(kafka={"security_protocol": "SASL_PLAINTEXT", **sasl})
    assert "NEARLINE_KAFKA__SASL_PASSWORD travels in cleartext" in line and "SASL_SSL" in line
    assert not _cleartext(kafka={"security_protocol": "SASL_SSL", **sasl})
    # SCRAM never sends the password itself
    scram = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256", **sasl}
    assert not _cleartext(kafka=scram)

    [line] = _cleartext(redis={"password": "redis-pw-8f1"})
    assert "NEARLINE_REDIS__PASSWORD travels in cleartext" in line and "rediss://" in line
    [line] = _cleartext(redis={"url": "redis://u:url-pw-9a4@h/0"})
    assert "the password in NEARLINE_REDIS__URL" in line
    assert _cleartext(redis={"url": "redis://h/0?password=query-pw-1e6"})
    assert not _cleartext(redis={"url": "rediss://u:url-pw-9a4@h/0", "password": "x"})
    assert not _cleartext(redis={"url": "redis://h/0"})  # no password at all

    [line] = _cleartext(serve={"token": "http-token-5d3"}, worker={"web_host": "0.0.0.0"})
    assert "NEARLINE_SERVE__TOKEN travels in cleartext" in line and "TLS proxy" in line
    # on loopback only a local client (a TLS proxy in front) reaches the worker
    assert not _cleartext(serve={"token": "http-token-5d3"})
    assert not _cleartext(serve={"token": "t"}, worker={"web_host": "::1"})

    everything = _cleartext(
        kafka={"security_protocol": "SASL_PLAINTEXT", **sasl},
        redis={"url": "redis://u:url-pw-9a4@h/0", "password": "redis-pw-8f1"},
        serve={"token": "http-token-5d3"},
        worker={"web_host": "10.1.2.3"},
    )
    assert len(everything) == 3
    assert not any(s in line for line in everything for s in ("pw-", "token-5d3"))
