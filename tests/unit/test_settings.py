"""Settings: defaults load; each invalid value is a one-line SettingsError naming its env var."""

from __future__ import annotations

import os

import pytest
from pydantic import SecretStr

from nearline_rec.settings import (
    ENV_PREFIX,
    Settings,
    SettingsError,
    cpu_list,
    iter_setting_docs,
    load_settings,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    # A developer's shell may export NEARLINE_*; every test starts from the defaults.
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def expect_error(env_var: str) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings()
    msg = str(info.value)
    assert "\n" not in msg
    assert env_var in msg
    return msg


def test_defaults_load():
    s = load_settings()
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert s.kafka.security_protocol == "PLAINTEXT"
    assert s.topics.user_events == "user-events"
    assert s.topics.partitions == 4
    assert s.redis.url.startswith("redis://")
    assert s.redis.key_prefix == "nl:"
    assert s.worker.max_event_bytes == 64 * 1024
    assert s.recall.embedding.k == 100
    assert s.ranking.model_path is None
    assert s.kafka.sasl_password is None


def test_env_values_are_read_and_typed(monkeypatch):
    monkeypatch.setenv("NEARLINE_TOPICS__PARTITIONS", "12")
    monkeypatch.setenv("NEARLINE_RECALL__GENRE__K", "7")
    monkeypatch.setenv("NEARLINE_RECALL__NEWEST__ENABLED", "false")
    monkeypatch.setenv("NEARLINE_REDIS__URL", "rediss://cache:6380/1")
    s = load_settings()
    assert s.topics.partitions == 12
    assert s.recall.genre.k == 7
    assert s.recall.newest.enabled is False
    assert s.recall.embedding.k == 100  # a sibling section keeps its default
    assert s.redis.url == "rediss://cache:6380/1"


@pytest.mark.parametrize(
    ("env_var", "value", "fragment"),
    [
        ("NEARLINE_TOPICS__PARTITIONS", "0", "greater than or equal to 1"),
        ("NEARLINE_TOPICS__PARTITIONS", "four", "integer"),
        ("NEARLINE_REDIS__URL", "http://x", "redis://"),
        ("NEARLINE_WORKER__BOGUS", "1", "not permitted"),
        ("NEARLINE_RECALL__EMBEDDING__K", "-1", "greater than or equal to 0"),
        ("NEARLINE_LSH__COMBINE", "xor", "'or', 'and' or 'vote'"),
        ("NEARLINE_WORKER__APP_ID", "has space", "pattern"),
        ("NEARLINE_REDIS__KEY_PREFIX", "", "at least 1"),
        ("NEARLINE_SERVE__CPUS", "3-1", "'3-1' is not a CPU number or range"),
        ("NEARLINE_SERVE__CPUS", "0,x", "'x' is not a CPU number or range"),
        ("NEARLINE_WORKER__CPUS", "1-", "'1-' is not a CPU number or range"),
    ],
)
def test_invalid_value_names_its_env_var(monkeypatch, env_var, value, fragment):
    monkeypatch.setenv(env_var, value)
    msg = expect_error(env_var)
    assert fragment in msg
    assert msg.startswith(f"invalid setting {env_var}:")


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_without_credentials_is_rejected(monkeypatch, protocol):
    monkeypatch.setenv("NEARLINE_KAFKA__SECURITY_PROTOCOL", protocol)
    monkeypatch.setenv("NEARLINE_KAFKA__SASL_USERNAME", "svc")  # password still missing
    msg = expect_error("NEARLINE_KAFKA__SASL_PASSWORD")
    assert protocol in msg


def test_sasl_with_credentials_loads(monkeypatch):
    monkeypatch.setenv("NEARLINE_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("NEARLINE_KAFKA__SASL_USERNAME", "svc")
    monkeypatch.setenv("NEARLINE_KAFKA__SASL_PASSWORD", "s3cret-kafka")
    s = load_settings()
    assert s.kafka.sasl_password.get_secret_value() == "s3cret-kafka"


@pytest.mark.parametrize(
    ("env_var", "value"),
    [
        ("NEARLINE_KAFKA", "garbage"),
        ("NEARLINE_RECALL__EMBEDDING", "not json"),
    ],
)
def test_unparsable_section_value_is_a_settings_error(monkeypatch, env_var, value):
    # A section set as a whole must be a JSON object; anything else is a SettingsError too,
    # not pydantic-settings' own exception (the CLI only catches ours).
    monkeypatch.setenv(env_var, value)
    expect_error(env_var)


def test_section_given_as_json_object(monkeypatch):
    monkeypatch.setenv("NEARLINE_WORKER", '{"batch_size": 17}')
    assert load_settings().worker.batch_size == 17


def test_secrets_are_secret_and_not_in_repr(monkeypatch):
    monkeypatch.setenv("NEARLINE_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("NEARLINE_KAFKA__SASL_USERNAME", "svc")
    monkeypatch.setenv("NEARLINE_KAFKA__SASL_PASSWORD", "kafka-pw-123")
    monkeypatch.setenv("NEARLINE_REDIS__PASSWORD", "redis-pw-456")
    s = load_settings()
    assert isinstance(s.kafka.sasl_password, SecretStr)
    assert isinstance(s.redis.password, SecretStr)
    assert s.redis.password.get_secret_value() == "redis-pw-456"
    for text in (repr(s), str(s), repr(s.kafka), repr(s.redis)):
        assert "kafka-pw-123" not in text
        assert "redis-pw-456" not in text


def test_settings_are_frozen():
    s = load_settings()
    with pytest.raises(ValueError):
        s.topics.partitions = 9  # type: ignore[misc]


def _leaf_fields() -> set[str]:
    names: set[str] = set()

    def walk(model, prefix):
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann, [*prefix, name])
            else:
                names.add(ENV_PREFIX + "__".join(p.upper() for p in [*prefix, name]))

    walk(Settings, [])
    return names


def test_setting_docs_cover_every_field_with_a_description():
    rows = iter_setting_docs()
    env_names = [name for name, _, _ in rows]
    assert len(env_names) == len(set(env_names))
    assert set(env_names) == _leaf_fields()
    assert "NEARLINE_RECALL__EMBEDDING__QUOTA" in env_names
    for name, _default, description in rows:
        assert description.strip(), f"{name} has no description"


def test_setting_docs_defaults_match():
    rows = {name: default for name, default, _ in iter_setting_docs()}
    assert rows["NEARLINE_TOPICS__PARTITIONS"] == "4"
    assert rows["NEARLINE_REDIS__KEY_PREFIX"] == "'nl:'"
    assert rows["NEARLINE_KAFKA__SASL_PASSWORD"] == "None"
    # per-channel defaults come from the section instance, not ChannelSettings' class defaults
    assert rows["NEARLINE_RECALL__EMBEDDING__K"] == "100"
    assert rows["NEARLINE_RECALL__NEWEST__QUOTA"] == "10"


def test_every_documented_env_var_is_accepted(monkeypatch):
    # The documented names must be the names the loader reads: set one, see it change.
    monkeypatch.setenv("NEARLINE_RANKING__TOP_N", "33")
    assert "NEARLINE_RANKING__TOP_N" in {name for name, _, _ in iter_setting_docs()}
    assert load_settings().ranking.top_n == 33


def test_cpu_list_reads_what_taskset_takes():
    assert cpu_list("") == set()
    assert cpu_list("1") == {1}
    assert cpu_list("0,2-4") == {0, 2, 3, 4}
    assert cpu_list(" 1 , 1-2 ") == {1, 2}
