from __future__ import annotations

import re
from pathlib import Path

import pytest

from parley.errors import ConfigError
from parley.settings import describe, load_settings, unknown_variables


def test_default_app_is_generated_once_and_kept(tmp_path: Path) -> None:
    env = {"PARLEY_DATA_DIR": str(tmp_path)}
    first = load_settings(env=env)
    second = load_settings(env=env)
    assert first.apps == second.apps
    assert first.apps[0].id.isdigit()  # the PyPI SDK accepts numeric app ids only
    assert first.port == 6001 and first.host == "127.0.0.1"


def test_default_app_entirely_from_the_environment(tmp_path: Path) -> None:
    env = {
        "PARLEY_DATA_DIR": str(tmp_path),
        "PARLEY_APP_ID": "7",
        "PARLEY_APP_KEY": "k",
        "PARLEY_APP_SECRET": "s",
        "PARLEY_APP_CLIENT_EVENTS": "true",
        "PARLEY_APP_CLIENT_EVENT_RATE": "0",
    }
    (app,) = load_settings(env=env).apps
    assert (app.id, app.key, app.secret, app.client_events, app.client_event_rate) == (
        "7",
        "k",
        "s",
        True,
        0,
    )
    assert not (tmp_path / "default-app.json").exists()


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    config = tmp_path / "parley.toml"
    config.write_text(
        "[server]\nport = 7000\nactivity_timeout_s = 60\n"
        '[[apps]]\nid = "1"\nkey = "a"\nsecret = "x"\n'
        '[[apps]]\nid = "2"\nkey = "b"\nsecret = "y"\nenabled = false\n'
    )
    settings = load_settings(
        {"port": 7002},
        env={"PARLEY_PORT": "7001", "PARLEY_ACTIVITY_TIMEOUT_S": "30"},
        config_file=config,
    )
    assert settings.port == 7002 and settings.activity_timeout_s == 30
    assert [a.id for a in settings.apps] == ["1", "2"] and not settings.apps[1].enabled


def test_a_cluster_node_from_the_environment(tmp_path: Path) -> None:
    settings = load_settings(
        env={
            "PARLEY_DATA_DIR": str(tmp_path),
            **_REDIS,
            "PARLEY_STORE": "postgres",
            "PARLEY_NODE_ID": "node-1",
            "PARLEY_REDIS_PREFIX": "chat-eu",
        }
    )
    assert (settings.broker, settings.node_id, settings.redis_prefix) == (
        "redis://:hunter2@127.0.0.1:6379/0",
        "node-1",
        "chat-eu",
    )
    shown = str(describe(settings))
    assert "hunter2" not in shown and _REDIS["PARLEY_CLUSTER_SECRET"] not in shown
    assert "redis://:***@127.0.0.1:6379/0" in shown


_REDIS = {
    "PARLEY_BROKER": "redis://:hunter2@127.0.0.1:6379/0",
    "PARLEY_CLUSTER_SECRET": "c" * 32,
    "PARLEY_STORE": "postgres",
}


@pytest.mark.parametrize(
    ("toml", "env", "problem"),
    [
        ("[server]\nbogus = 1\n", {}, "unknown setting 'bogus'"),
        ('[[apps]]\nid = "1"\nkey = "a"\n', {}, "missing 'secret'"),
        ("", {"PARLEY_PORT": "x"}, "PARLEY_PORT"),
        ("", {"PARLEY_ACTIVITY_TIMEOUT_S": "0"}, "activity_timeout_s"),
        ("", {"PARLEY_HEADER_TIMEOUT_S": "0"}, "'header_timeout_s' must be > 0"),
        ("[server]\nkeepalive_timeout_s = -1\n", {}, "'keepalive_timeout_s' must be > 0"),
        ("", {"PARLEY_MAX_HTTP_HEAD_BYTES": "100"}, "'max_http_head_bytes' must be at least"),
        (
            '[[apps]]\nid = "1"\nkey = "a"\nsecret = "s"\n[[apps]]\nid = "1"\nkey = "b"\nsecret = "s"\n',
            {},
            "distinct",
        ),
        ('[[apps]]\nid = "chat"\nkey = "a"\nsecret = "s"\n', {}, "'id' must be digits.*'chat'"),
        ("", {"PARLEY_APP_ID": "x1", "PARLEY_APP_KEY": "k", "PARLEY_APP_SECRET": "s"}, "digits"),
        ('[apps]\nid = "1"\nkey = "a"\nsecret = "s"\n', {}, r"write \[\[apps\]\], not \[apps\]"),
        ("[history]\npattern = 'x'\n", {}, r"write \[\[history\]\]"),
        ("[[server]]\nport = 1\n", {}, r"\[server\] must be a table"),
        ("port = 7000\n", {}, "'port' is outside any section; put it under \\[server\\]"),
        ("[serve]\nport = 7000\n", {}, r"unknown section \[serve\]"),
        ("[[history]]\npattern = 'a-*'\nmax_cnt = 5\n", {}, "unknown key 'max_cnt'"),
        ("[[history]]\nmax_count = 5\n", {}, "missing 'pattern'"),
        ("", {"PARLEY_BROKER": "nats://x"}, "'broker' must be memory or a redis://"),
        ("", {"PARLEY_BROKER": "redis://127.0.0.1"}, "needs 'cluster_secret'"),
        ("", {**_REDIS, "PARLEY_CLUSTER_SECRET": "short"}, "at least 32 bytes"),
        ("", {**_REDIS, "PARLEY_STORE": "sqlite"}, r"needs store = \"postgres\""),
        ("", {"PARLEY_NODE_ID": "a b"}, "'node_id' must be"),
        ("", {"PARLEY_REDIS_PREFIX": ""}, "'redis_prefix' must be"),
        (
            '[[apps]]\nid = "1"\nkey = "a"\nsecret = "s"\n[[apps.webhooks]]\nurl = "ftp://x"\n',
            {},
            r"webhooks\[0\]: webhook url must be an http:// or https:// URL",
        ),
        (
            '[[apps]]\nid = "1"\nkey = "a"\nsecret = "s"\n[[apps.webhooks]]\nurl = "http://x/h"\nevents = ["member_joined"]\n',
            {},
            "unknown member_joined; known: channel_occupied",
        ),
        (
            "",
            {
                "PARLEY_APP_ID": "1",
                "PARLEY_APP_KEY": "k",
                "PARLEY_APP_SECRET": "s",
                "PARLEY_APP_WEBHOOK_EVENTS": "cache_miss",
            },
            "'webhook_events' needs 'webhook_url'",
        ),
    ],
)
def test_bad_settings_name_the_key(
    tmp_path: Path, toml: str, env: dict[str, str], problem: str
) -> None:
    config = tmp_path / "parley.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError, match=problem):
        load_settings(env={"PARLEY_DATA_DIR": str(tmp_path), **env}, config_file=config)


def test_connection_timeouts_and_head_limit_from_env_and_file(tmp_path: Path) -> None:
    config = tmp_path / "parley.toml"
    config.write_text("[server]\nkeepalive_timeout_s = 75\nmax_http_head_bytes = 8192\n")
    settings = load_settings(
        env={"PARLEY_DATA_DIR": str(tmp_path), "PARLEY_HEADER_TIMEOUT_S": "2.5"},
        config_file=config,
    )
    assert (settings.header_timeout_s, settings.keepalive_timeout_s) == (2.5, 75.0)
    assert settings.max_http_head_bytes == 8192
    defaults = load_settings(env={"PARLEY_DATA_DIR": str(tmp_path)})
    assert (defaults.header_timeout_s, defaults.keepalive_timeout_s) == (10.0, 60.0)


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load_settings(env={"PARLEY_DATA_DIR": str(tmp_path)})
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


def test_unknown_variables_are_named_with_the_closest_known_one() -> None:
    env = {
        "PARLEY_ACTIVITY_TIMEOUT": "30",
        "PARLEY_APP_CLIENT_EVENT": "true",
        "PARLEY_PORT": "6001",
        "PARLEY_CONFIG": "x.toml",
        "PARLEY_ZZZ_QQQ": "1",
        "PARLEY_TEST_POSTGRES_URL": "postgresql://x",
        "HOME": "/root",
    }
    assert unknown_variables(env) == [
        "unknown variable PARLEY_ACTIVITY_TIMEOUT is ignored "
        "(did you mean PARLEY_ACTIVITY_TIMEOUT_S?)",
        "unknown variable PARLEY_APP_CLIENT_EVENT is ignored "
        "(did you mean PARLEY_APP_CLIENT_EVENTS?)",
        "unknown variable PARLEY_ZZZ_QQQ is ignored",
    ]


def test_the_start_line_shows_no_secret(tmp_path: Path) -> None:
    settings = load_settings(
        env={
            "PARLEY_DATA_DIR": str(tmp_path),
            "PARLEY_POSTGRES_URL": "postgresql://parley:hunter2@db:5432/parley",
            "PARLEY_METRICS_TOKEN": "scrape-me",
        }
    )
    shown = str(describe(settings))
    assert "hunter2" not in shown and "scrape-me" not in shown
    assert "postgresql://parley:***@db:5432/parley" in shown
    assert settings.apps[0].secret not in shown


def test_webhooks_from_the_environment_and_the_file(tmp_path: Path) -> None:
    env = {
        "PARLEY_DATA_DIR": str(tmp_path),
        "PARLEY_APP_ID": "7",
        "PARLEY_APP_KEY": "k",
        "PARLEY_APP_SECRET": "s",
        "PARLEY_APP_WEBHOOK_URL": "https://hooks.example/pusher",
        "PARLEY_APP_WEBHOOK_EVENTS": "channel_occupied, member_added",
    }
    (app,) = load_settings(env=env).apps
    (hook,) = app.webhooks
    assert (hook.url, hook.events) == (
        "https://hooks.example/pusher",
        ("channel_occupied", "member_added"),
    )
    assert hook.wants("member_added") and not hook.wants("client_event")
    config = tmp_path / "parley.toml"
    config.write_text(
        '[[apps]]\nid = "1"\nkey = "a"\nsecret = "s"\n'
        '[[apps.webhooks]]\nurl = "http://127.0.0.1:9/a"\n'
        '[[apps.webhooks]]\nurl = "http://127.0.0.1:9/b"\nevents = ["client_event"]\n'
    )
    (app,) = load_settings(env={"PARLEY_DATA_DIR": str(tmp_path)}, config_file=config).apps
    assert [(w.url, w.events) for w in app.webhooks] == [
        ("http://127.0.0.1:9/a", ()),
        ("http://127.0.0.1:9/b", ("client_event",)),
    ]


def test_presence_events_off_patterns(tmp_path: Path) -> None:
    env = {
        "PARLEY_DATA_DIR": str(tmp_path),
        "PARLEY_APP_ID": "7",
        "PARLEY_APP_KEY": "k",
        "PARLEY_APP_SECRET": "s",
        "PARLEY_APP_PRESENCE_EVENTS_OFF": " presence-big-*, presence-lobby ,*-stadium",
        "PARLEY_APP_MAX_PRESENCE_MEMBERS": "10000",
    }
    (app,) = load_settings(env=env).apps
    assert app.max_presence_members == 10_000
    assert app.member_events_off("presence-big-1") and app.member_events_off("presence-lobby")
    assert app.member_events_off("presence-x-stadium")
    assert not app.member_events_off("presence-lobby-2") and not app.member_events_off("presence-b")
    assert (
        not load_settings(env={**env, "PARLEY_APP_PRESENCE_EVENTS_OFF": ""})
        .apps[0]
        .member_events_off("presence-big-1")
    )
    for pattern in ("private-*", "presence_big-*", "room"):
        problem = re.escape(f"'presence_events_off' pattern '{pattern}' matches no presence")
        with pytest.raises(ConfigError, match=problem):
            load_settings(env={**env, "PARLEY_APP_PRESENCE_EVENTS_OFF": f"presence-a,{pattern}"})
