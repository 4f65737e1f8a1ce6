"""Configuration loading against the documented reference (docs/configuration.md): every
documented key and default, precedence, JSONC files, value validation, one message for
every problem, unknown-key warnings, and ``describe()``."""

from __future__ import annotations

import json
import os

import pytest

from zephyr_edge.settings import config
from zephyr_edge.errors import ConfigError
from tests.backends_support import REQUIRED_KEYS


#: The documented keys (docs/configuration.md) -> default (as ``describe()`` shows it).
DOCUMENTED_DEFAULTS = {
    # Server
    "ZE_WORKER_PORT": 8080,
    "ZE_WORKER_LOG_LEVEL": "info",
    "ZE_WORKER_DELIMITER": "-",
    # S3
    "ZE_WORKER_S3_REGION": "us-east-1",
    "ZE_WORKER_S3_FORCE_PATH_STYLE": True,
    "ZE_WORKER_S3_CONNECTION_TIMEOUT_MS": 5000,
    "ZE_WORKER_S3_REQUEST_TIMEOUT_MS": 30000,
    "ZE_WORKER_S3_UPLOAD_REQUEST_TIMEOUT_MS": 60000,
    "ZE_WORKER_S3_MAX_SOCKETS": 200,
    "ZE_WORKER_S3_SOCKET_ACQUISITION_WARNING_TIMEOUT_MS": 35000,
    # Redis
    "ZE_WORKER_REDIS_PORT": 6379,
    "ZE_WORKER_REDIS_PASSWORD": "",
    "ZE_WORKER_REDIS_TLS": False,
    "ZE_WORKER_REDIS_DB": 0,
    "ZE_WORKER_REDIS_PREFIX_ENVS": "{ze-k8s-worker}:envs:",
    "ZE_WORKER_REDIS_PREFIX_SNAPSHOTS": "{ze-k8s-worker}:snapshots:",
    # Replication
    "ZE_WORKER_REPLICA_NAME": "",
    "ZE_WORKER_REPLICAS_URLS": [],
    # Ours
    "ZE_WORKER_STORAGE_BACKEND": "s3",
    "ZE_WORKER_KV_BACKEND": "redis",
    "ZE_WORKER_DATA_DIR": "zephyr-edge-data",
    "ZE_WORKER_LISTEN_HOST": "0.0.0.0",
    "ZE_WORKER_SHUTDOWN_GRACE_MS": 20000,
    "ZE_WORKER_READINESS_TIMEOUT_MS": 2000,
    "ZE_WORKER_READINESS_WRITE_CHECK_INTERVAL_MS": 60000,
}

SECRETS = {
    "ZE_WORKER_JWT_SECRET": "jwt-secret-0123456789abcdef0123456789",
    "ZE_WORKER_S3_ACCESS_KEY_ID": "AKIAEXAMPLEACCESSKEY",
    "ZE_WORKER_S3_SECRET_ACCESS_KEY": "s3-secret-key-9876543210zyxwvu",
}
MINIMAL = {
    **SECRETS,
    "ZE_WORKER_S3_ENDPOINT": "http://127.0.0.1:9000",
    "ZE_WORKER_S3_BUCKET": "assets",
    "ZE_WORKER_REDIS_HOST": "127.0.0.1",
}


def shown(cfg: config.Config) -> dict[str, object]:
    """key -> value as ``describe()`` shows it (JSON round trip, as the CLI prints it)."""
    return {k: v["value"] for k, v in json.loads(json.dumps(config.describe(cfg))).items()}


def problems_of(environ: dict, overrides: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.load(environ, overrides)
    return info.value.problems


def write(tmp_path, text: str, name: str = "config.json") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- documented keys -----------------------------------------------------------------------


def test_every_documented_key_has_its_documented_default():
    cfg = config.load(MINIMAL)
    values = shown(cfg)
    sources = config.describe(cfg)
    for key, default in DOCUMENTED_DEFAULTS.items():
        assert key in values, f"{key} is documented but not a configuration key"
        assert values[key] == default, f"{key}: {values[key]!r} != documented {default!r}"
        assert sources[key]["source"] == "default"
    for key in REQUIRED_KEYS:
        assert sources[key]["source"] == "env"


def test_documented_values_are_used():
    cfg = config.load({**MINIMAL, "ZE_WORKER_PORT": "9090", "ZE_WORKER_LOG_LEVEL": "TRACE",
                       "ZE_WORKER_DELIMITER": ".", "ZE_WORKER_REPLICA_NAME": "eu-west-1"})
    assert cfg.worker.port == 9090
    assert cfg.worker.log_level is config.LogLevel.TRACE
    assert cfg.worker.delimiter == "."
    assert cfg.worker.replica_name == "eu-west-1"
    assert cfg.storage.name == "s3" and cfg.kv.name == "redis"


def test_all_missing_required_keys_in_one_message():
    problems = problems_of({})
    message = str(ConfigError(problems))
    for key in REQUIRED_KEYS:
        assert any(key in p for p in problems), f"{key} not reported"
        assert key in message
    assert len(problems) == len(REQUIRED_KEYS)


def test_empty_required_value_counts_as_missing():
    problems = problems_of({**MINIMAL, "ZE_WORKER_S3_BUCKET": ""})
    assert problems == ["ZE_WORKER_S3_BUCKET is required but not set"]


def test_local_backends_need_only_the_jwt_secret(tmp_path):
    env = {"ZE_WORKER_STORAGE_BACKEND": "local", "ZE_WORKER_KV_BACKEND": "local"}
    assert problems_of(env) == ["ZE_WORKER_JWT_SECRET is required but not set"]
    cfg = config.load({**env, "ZE_WORKER_JWT_SECRET": "x" * 32, "ZE_WORKER_DATA_DIR": str(tmp_path)})
    assert (cfg.storage.name, cfg.kv.name) == ("local", "local")


def test_unknown_backend_lists_installed_ones():
    problems = problems_of({**MINIMAL, "ZE_WORKER_STORAGE_BACKEND": "gcs"})
    assert len(problems) == 1
    assert "'gcs'" in problems[0] and "s3" in problems[0] and "local" in problems[0]


# --- sources and precedence ----------------------------------------------------------------


def test_file_beats_env(tmp_path):
    path = write(tmp_path, json.dumps({"ZE_WORKER_PORT": "7000", "ZE_WORKER_S3_BUCKET": "from-file"}))
    cfg = config.load({**MINIMAL, "ZE_WORKER_PORT": "6000", "ZE_WORKER_CONFIG_JSON": path})
    assert cfg.worker.port == 7000
    described = config.describe(cfg)
    assert described["ZE_WORKER_PORT"] == {"value": 7000, "source": "file"}
    assert described["ZE_WORKER_S3_BUCKET"] == {"value": "from-file", "source": "file"}
    assert described["ZE_WORKER_S3_ENDPOINT"]["source"] == "env"


def test_cli_overrides_beat_file_and_env(tmp_path):
    path = write(tmp_path, json.dumps({"ZE_WORKER_PORT": "7000"}))
    cfg = config.load({**MINIMAL, "ZE_WORKER_CONFIG_JSON": path}, {"ZE_WORKER_PORT": 7100})
    assert config.describe(cfg)["ZE_WORKER_PORT"] == {"value": 7100, "source": "cli"}


def test_jsonc_comments_and_trailing_commas(tmp_path):
    text = """
    // Mounted from a Kubernetes Secret
    {
      /* the signing secret,
         shared by every region */
      "ZE_WORKER_JWT_SECRET": "jwt-secret-0123456789abcdef0123456789", // trailing comment
      "ZE_WORKER_S3_ENDPOINT": "http://127.0.0.1:9000",
      "ZE_WORKER_S3_ACCESS_KEY_ID": "AKIAEXAMPLEACCESSKEY",
      "ZE_WORKER_S3_SECRET_ACCESS_KEY": "s3-secret-key-9876543210zyxwvu",
      "ZE_WORKER_S3_BUCKET": "assets",
      "ZE_WORKER_REDIS_HOST": "redis.internal",
      "ZE_WORKER_REPLICAS_URLS": ["https://eu.example.com", "https://ap.example.com",],
    }
    """
    cfg = config.load({"ZE_WORKER_CONFIG_JSON": write(tmp_path, text)})
    assert cfg.worker.jwt_secret == SECRETS["ZE_WORKER_JWT_SECRET"]
    assert cfg.worker.replicas_urls == ("https://eu.example.com", "https://ap.example.com")
    assert shown(cfg)["ZE_WORKER_REDIS_HOST"] == "redis.internal"


def test_comment_markers_and_commas_inside_strings_survive(tmp_path):
    tricky = 'a//b/*c*/d,}e,]f"g\\h'
    text = "{\n" + f'  "ZE_WORKER_JWT_SECRET": {json.dumps(tricky)}, // comment\n' + "}"
    data = config.read_config_file(write(tmp_path, text))
    assert data == {"ZE_WORKER_JWT_SECRET": tricky}
    url = "http://127.0.0.1:9000/path//x"
    text = '{"ZE_WORKER_S3_ENDPOINT": "%s", /* c */ "ZE_WORKER_S3_BUCKET": "b/*c*/"}' % url
    assert config.read_config_file(write(tmp_path, text)) == {"ZE_WORKER_S3_ENDPOINT": url, "ZE_WORKER_S3_BUCKET": "b/*c*/"}


@pytest.mark.parametrize(
    "text,expected",
    [("true", True), ("false", False), ("1", True), ("0", False), ("yes", True), ("no", False),
     ("TRUE", True), (" No ", False)],
)
def test_booleans(text, expected):
    cfg = config.load({**MINIMAL, "ZE_WORKER_S3_FORCE_PATH_STYLE": text, "ZE_WORKER_REDIS_TLS": text})
    values = shown(cfg)
    assert values["ZE_WORKER_S3_FORCE_PATH_STYLE"] is expected
    assert values["ZE_WORKER_REDIS_TLS"] is expected


def test_boolean_from_json_file(tmp_path):
    path = write(tmp_path, json.dumps({"ZE_WORKER_REDIS_TLS": True, "ZE_WORKER_S3_FORCE_PATH_STYLE": "false"}))
    values = shown(config.load({**MINIMAL, "ZE_WORKER_CONFIG_JSON": path}))
    assert values["ZE_WORKER_REDIS_TLS"] is True
    assert values["ZE_WORKER_S3_FORCE_PATH_STYLE"] is False


# --- bad values -----------------------------------------------------------------------------


def test_each_bad_value_is_named_in_one_error():
    problems = problems_of(
        {
            **MINIMAL,
            "ZE_WORKER_PORT": "http",
            "ZE_WORKER_S3_ENDPOINT": "minio:9000",
            "ZE_WORKER_DELIMITER": "/",
            "ZE_WORKER_LOG_LEVEL": "verbose",
            "ZE_WORKER_REDIS_TLS": "maybe",
            "ZE_WORKER_REPLICAS_URLS": "https://ok.example.com,ftp://bad.example.com",
        }
    )
    for key in ("ZE_WORKER_PORT", "ZE_WORKER_S3_ENDPOINT", "ZE_WORKER_DELIMITER", "ZE_WORKER_LOG_LEVEL",
                "ZE_WORKER_REDIS_TLS", "ZE_WORKER_REPLICAS_URLS"):
        assert sum(p.startswith(key + ":") for p in problems) == 1, (key, problems)
    assert len(problems) == 6
    assert any("'verbose'" in p and "trace" in p for p in problems)


@pytest.mark.parametrize("port", ["0", "65536", "-1", "80.5", "eighty"])
def test_bad_ports(port):
    problems = problems_of({**MINIMAL, "ZE_WORKER_PORT": port})
    assert len(problems) == 1 and problems[0].startswith("ZE_WORKER_PORT:")


@pytest.mark.parametrize("key,value", [
    ("ZE_WORKER_READINESS_TIMEOUT_MS", "0"),
    ("ZE_WORKER_READINESS_WRITE_CHECK_INTERVAL_MS", "0"),
    ("ZE_WORKER_SHUTDOWN_GRACE_MS", "-5"),
])
def test_durations_must_be_sensible(key, value):
    problems = problems_of({**MINIMAL, key: value})
    assert len(problems) == 1 and problems[0].startswith(key + ":")


@pytest.mark.parametrize("level", ["trace", "debug", "info", "warn", "error", "fatal", "WARNING"])
def test_log_levels(level):
    cfg = config.load({**MINIMAL, "ZE_WORKER_LOG_LEVEL": level})
    assert cfg.worker.log_level.value == {"WARNING": "warn"}.get(level, level)


# --- replica URLs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        '["https://eu.example.com", "http://10.0.0.7:8080/"]',
        "https://eu.example.com, http://10.0.0.7:8080/",
        "https://eu.example.com,http://10.0.0.7:8080",
    ],
)
def test_replica_urls_json_array_or_comma_list(value):
    cfg = config.load({**MINIMAL, "ZE_WORKER_REPLICAS_URLS": value})
    assert cfg.worker.replicas_urls == ("https://eu.example.com", "http://10.0.0.7:8080")


def test_replica_urls_as_array_in_file(tmp_path):
    path = write(tmp_path, json.dumps({"ZE_WORKER_REPLICAS_URLS": ["https://eu.example.com"]}))
    cfg = config.load({**MINIMAL, "ZE_WORKER_CONFIG_JSON": path})
    assert cfg.worker.replicas_urls == ("https://eu.example.com",)


@pytest.mark.parametrize("value", ["", "[]", "  "])
def test_no_replica_urls(value):
    assert config.load({**MINIMAL, "ZE_WORKER_REPLICAS_URLS": value}).worker.replicas_urls == ()


def test_bad_json_array_of_urls_is_named():
    problems = problems_of({**MINIMAL, "ZE_WORKER_REPLICAS_URLS": '["https://a.example.com",'})
    assert len(problems) == 1 and problems[0].startswith("ZE_WORKER_REPLICAS_URLS:")


# --- unknown keys ---------------------------------------------------------------------------


def test_unknown_keys_warn_with_did_you_mean(tmp_path):
    path = write(tmp_path, json.dumps({"ZE_WORKER_REDIS_PASWORD": "x"}))
    cfg = config.load({**MINIMAL, "ZE_WORKER_PROT": "8080", "ZE_WORKER_S3_BUKET": "x",
                       "ZE_WORKER_CONFIG_JSON": path, "ZE_WORKER_COMPLETELY_DIFFERENT": "1"})
    warnings = "\n".join(cfg.warnings)
    assert "ZE_WORKER_PROT (from env); did you mean ZE_WORKER_PORT?" in warnings
    assert "did you mean ZE_WORKER_S3_BUCKET?" in warnings
    assert "ZE_WORKER_REDIS_PASWORD (from file); did you mean ZE_WORKER_REDIS_PASSWORD?" in warnings
    assert "unknown configuration key ZE_WORKER_COMPLETELY_DIFFERENT (from env)" in warnings
    assert len(cfg.warnings) == 4


def test_keys_of_other_installed_backends_are_not_warned(tmp_path):
    env = {"ZE_WORKER_STORAGE_BACKEND": "local", "ZE_WORKER_KV_BACKEND": "local",
           "ZE_WORKER_JWT_SECRET": "x" * 32, "ZE_WORKER_DATA_DIR": str(tmp_path),
           "ZE_WORKER_S3_BUCKET": "assets", "ZE_WORKER_REDIS_HOST": "redis"}
    assert config.load(env).warnings == ()


def test_no_warnings_for_a_clean_config():
    assert config.load(MINIMAL).warnings == ()


# --- files that cannot be used --------------------------------------------------------------


def test_missing_file_is_named(tmp_path):
    path = str(tmp_path / "nope.json")
    problems = problems_of({**MINIMAL, "ZE_WORKER_CONFIG_JSON": path})
    assert len(problems) == 1 and path in problems[0] and "ZE_WORKER_CONFIG_JSON" in problems[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_named(tmp_path):
    path = write(tmp_path, "{}")
    os.chmod(path, 0)
    problems = problems_of({**MINIMAL, "ZE_WORKER_CONFIG_JSON": path})
    assert path in problems[0]


def test_directory_instead_of_file_is_named(tmp_path):
    problems = problems_of({**MINIMAL, "ZE_WORKER_CONFIG_JSON": str(tmp_path)})
    assert str(tmp_path) in problems[0]


def test_invalid_json_names_file_and_position(tmp_path):
    text = '{\n  /* a comment */ "ZE_WORKER_PORT": "8080",\n  "ZE_WORKER_DELIMITER" "-"\n}\n'
    path = write(tmp_path, text)
    problems = problems_of({**MINIMAL, "ZE_WORKER_CONFIG_JSON": path})
    assert len(problems) == 1
    assert path in problems[0]
    # the missing colon after the key on line 3 (column 25), comments notwithstanding
    assert "line 3, column 25" in problems[0]


def test_file_must_hold_an_object(tmp_path):
    problems = problems_of({**MINIMAL, "ZE_WORKER_CONFIG_JSON": write(tmp_path, '["ZE_WORKER_PORT"]')})
    assert "expected a JSON object" in problems[0]


def test_not_utf8_file_is_named(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"ZE_WORKER_REPLICA_NAME": "\xe9"}')
    problems = problems_of({**MINIMAL, "ZE_WORKER_CONFIG_JSON": str(path)})
    assert str(path) in problems[0]


# --- describe -------------------------------------------------------------------------------


def test_describe_redacts_secrets_and_shows_sources(tmp_path):
    path = write(tmp_path, json.dumps({"ZE_WORKER_REDIS_PASSWORD": "redis-password-abcdef"}))
    cfg = config.load({**MINIMAL, "ZE_WORKER_CONFIG_JSON": path}, {"ZE_WORKER_PORT": 8181})
    described = config.describe(cfg)
    text = json.dumps(described)
    for value in [*SECRETS.values(), "redis-password-abcdef"]:
        assert value not in text
    for key in [*SECRETS, "ZE_WORKER_REDIS_PASSWORD"]:
        assert described[key]["value"] == "***"
    assert described["ZE_WORKER_REDIS_PASSWORD"]["source"] == "file"
    assert described["ZE_WORKER_JWT_SECRET"]["source"] == "env"
    assert described["ZE_WORKER_PORT"] == {"value": 8181, "source": "cli"}
    assert described["ZE_WORKER_DELIMITER"] == {"value": "-", "source": "default"}
    # an empty secret is shown as empty, not as a mask
    assert config.describe(config.load(MINIMAL))["ZE_WORKER_REDIS_PASSWORD"]["value"] == ""


# --- shipped placeholders and short secrets -------------------------------------------------


@pytest.mark.parametrize("key", sorted(SECRETS) + ["ZE_WORKER_REDIS_PASSWORD"])
@pytest.mark.parametrize("value", ["CHANGE-ME-long-random-string", "change-me", "ChangeMe!", "<secret key>"])
def test_a_placeholder_secret_is_refused_naming_the_key_not_the_value(key, value):
    problems = problems_of({**MINIMAL, key: value})
    assert problems == [f"{key} is still a placeholder from the example configuration: replace it with a real secret"]
    assert value not in "\n".join(problems)


def test_placeholders_of_unselected_backends_and_non_secrets_are_not_refused(tmp_path):
    env = {"ZE_WORKER_STORAGE_BACKEND": "local", "ZE_WORKER_KV_BACKEND": "local", "ZE_WORKER_DATA_DIR": str(tmp_path),
           "ZE_WORKER_JWT_SECRET": "x" * 32, "ZE_WORKER_S3_SECRET_ACCESS_KEY": "CHANGE-ME", "ZE_WORKER_REPLICA_NAME": "<r>"}
    assert config.load(env).worker.replica_name == "<r>"


@pytest.mark.parametrize("secret,warned", [("x" * 31, True), ("é" * 16, False), ("x" * 32, False), ("s3cr3t", True)])
def test_a_short_jwt_secret_is_warned_about(secret, warned):
    warnings = config.load({**MINIMAL, "ZE_WORKER_JWT_SECRET": secret}).warnings
    assert [w for w in warnings if w.startswith("ZE_WORKER_JWT_SECRET is shorter than 32 bytes")] == (
        [w for w in warnings] if warned else [])
    assert secret not in "\n".join(warnings)


def test_the_secret_dev_mode_generates_is_long_enough_not_to_be_warned_about(tmp_path):
    from zephyr_edge.cli import devmode

    env = {"ZE_WORKER_DATA_DIR": str(tmp_path / "data")}
    overrides, _ = devmode.overrides(config.gather(env))
    assert len(overrides["ZE_WORKER_JWT_SECRET"].encode("utf-8")) >= config.MIN_JWT_SECRET_BYTES
    assert config.load(env, overrides).warnings == ()
