"""config.py: loading settings, ${VAR} expansion, overrides and validation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from batchgate.config import ConfigError, Settings, expand_env, load_settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in ("BATCHGATE_CONFIG", "BATCHGATE_DATABASE_URL", "BATCHGATE_FILES_URL", "BATCHGATE_ADMIN_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray ./batchgate.yaml
    return monkeypatch


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_expands_env_vars_with_defaults(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("BG_TEST_UPSTREAM_KEY", "sk-from-env")
    clean_env.setenv("BG_TEST_HOST", "10.1.2.3")
    clean_env.delenv("BG_TEST_UNSET", raising=False)
    clean_env.delenv("BG_TEST_PORT", raising=False)
    config = _write(
        tmp_path / "bg.yaml",
        """
server: {host: "${BG_TEST_HOST:-127.0.0.1}", port: 9000}
auth: {admin_key: "${BG_TEST_UNSET}"}
models:
  - name: m1
    deployments:
      - provider: openai
        base_url: "http://${BG_TEST_HOST}:${BG_TEST_PORT:-8000}/v1"
        api_key: ${BG_TEST_UPSTREAM_KEY}
        model: "${BG_TEST_UNSET:-upstream-m1}"
""",
    )
    settings = load_settings(config)
    assert settings.server.host == "10.1.2.3"
    assert settings.auth.admin_key is None  # unset expands to empty, which means no key
    deployment = settings.models[0].deployments[0]
    assert deployment.base_url == "http://10.1.2.3:8000/v1"
    assert deployment.api_key == "sk-from-env"
    assert deployment.model == "upstream-m1"
    assert deployment.name == "m1/0"


def test_expand_env_walks_nested_values_and_leaves_other_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BG_TEST_A", "alpha")
    monkeypatch.delenv("BG_TEST_B", raising=False)
    tree = {"x": ["${BG_TEST_A}-${BG_TEST_B:-beta}", 3, None, True], "y": {"z": "$BG_TEST_A ${BG_TEST_B:-}"}}
    assert expand_env(tree) == {"x": ["alpha-beta", 3, None, True], "y": {"z": "$BG_TEST_A "}}


def test_expand_env_default_applies_to_an_empty_variable_as_in_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    # POSIX shells and docker compose: `${VAR:-default}` uses the default when VAR is unset *or empty*.
    monkeypatch.setenv("BG_TEST_EMPTY", "")
    assert expand_env("${BG_TEST_EMPTY:-fallback}") == "fallback"


def test_config_env_overrides_win_over_the_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = _write(
        tmp_path / "bg.yaml",
        """
storage: {database: "sqlite:///from-file.db", files: from-file-dir}
auth: {admin_key: file-key}
""",
    )
    clean_env.setenv("BATCHGATE_DATABASE_URL", "postgresql://bg:bg@127.0.0.1/bg")
    clean_env.setenv("BATCHGATE_FILES_URL", "/srv/blobs")
    clean_env.setenv("BATCHGATE_ADMIN_KEY", "env-key")
    settings = load_settings(config)
    assert settings.storage.database == "postgresql://bg:bg@127.0.0.1/bg"
    assert settings.storage.files == "/srv/blobs"
    assert settings.auth.admin_key == "env-key"


def test_config_env_overrides_apply_without_a_file_and_with_empty_sections(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("BATCHGATE_ADMIN_KEY", "env-key")
    assert load_settings().auth.admin_key == "env-key"
    config = _write(tmp_path / "sections.yaml", "auth:\nstorage:\n")
    clean_env.setenv("BATCHGATE_FILES_URL", "/x")
    settings = load_settings(config)
    assert settings.auth.admin_key == "env-key"
    assert settings.storage.files == "/x"


def test_config_file_from_batchgate_config_env(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = _write(tmp_path / "elsewhere.yaml", "server: {port: 7777}\nengine: {poll_interval_s: 0.2}\n")
    clean_env.setenv("BATCHGATE_CONFIG", str(config))
    settings = load_settings()
    assert settings.server.port == 7777
    assert settings.engine.poll_interval_s == 0.2


def test_config_defaults_without_any_file(clean_env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert [m.name for m in settings.models] == ["smollm2"]
    assert settings.models[0].deployments[0].provider == "local"
    assert settings.storage.database == "sqlite:///.batchgate/batchgate.db"
    assert settings.storage.files == ".batchgate/files"
    assert settings.auth.admin_key is None
    assert settings.limits.max_requests_per_batch == 50_000
    assert settings.limits.max_file_bytes == 209_715_200


def test_config_deployment_defaults(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = _write(
        tmp_path / "bg.yaml",
        "models:\n  - name: gpt-x\n    deployments:\n      - {provider: openai, base_url: 'http://h/v1'}\n",
    )
    deployment = load_settings(config).models[0].deployments[0]
    assert deployment.model == "gpt-x"
    assert deployment.max_concurrency == 16
    assert deployment.max_attempts == 5
    assert deployment.timeout_s == 600


@pytest.mark.parametrize(
    "text",
    [
        "models: [\n",  # not YAML
        "- a list\n",  # not a mapping
        "server: {prot: 1}\n",  # unknown key
        "models:\n  - name: m\n    deployments: []\n",
        "models:\n  - name: m\n    deployments:\n      - {provider: openai}\n",  # no base_url
    ],
)
def test_config_errors_are_config_errors(clean_env: pytest.MonkeyPatch, tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(_write(tmp_path / "bad.yaml", text))


def test_config_explicit_missing_file_is_an_error(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_config_refuses_a_deployment_name_used_by_two_models() -> None:
    deployment = {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "name": "vllm-1"}
    with pytest.raises(ValueError, match=r"deployment names must be unique across models: \['vllm-1'\]"):
        Settings.model_validate(
            {"models": [{"name": "a", "deployments": [deployment]}, {"name": "b", "deployments": [deployment]}]}
        )
    # Unnamed deployments get "<model>/<index>", unique by construction.
    unnamed = {"provider": "openai", "base_url": "http://127.0.0.1:9/v1"}
    Settings.model_validate(
        {"models": [{"name": "a", "deployments": [unnamed, unnamed]}, {"name": "b", "deployments": [unnamed]}]}
    )


@pytest.mark.parametrize(
    ("base_url", "message"),
    [
        (
            "http://user:secret@127.0.0.1:9/v1",
            "must not carry user:password@; put the upstream's credential in api_key",
        ),
        ("http://token@127.0.0.1:9/v1", "must not carry user:password@"),
        ("127.0.0.1:9/v1", "must be an http:// or https:// URL with a host"),
        ("ftp://127.0.0.1/v1", "must be an http:// or https:// URL with a host"),
    ],
)
def test_config_refuses_a_base_url_that_would_fail_every_call(base_url: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Settings.model_validate(
            {"models": [{"name": "a", "deployments": [{"provider": "openai", "base_url": base_url}]}]}
        )
