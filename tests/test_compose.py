"""Static checks of docker-compose.yml and the Dockerfile (no Docker engine needed)."""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml  # type: ignore[import-untyped]

from pooling_ledger.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
APP_SERVICES = ("init", "consumer", "api")
#: The long-running services: they connect as the ledger's writer role only.
WRITER_SERVICES = ("consumer", "api")
#: Variables the compose file itself passes through that the Settings model does not define.
EXTRA_ENV = {"POSTGRES_PASSWORD", "POOLING_API_TOKEN", "POOLING_READER_PASSWORD", "POOLING_WRITER_PASSWORD"}
#: The secrets the host must give: no default, or everyone would know it.
REQUIRED_SECRETS = ("POSTGRES_PASSWORD", "POOLING_WRITER_PASSWORD", "POOLING_READER_PASSWORD", "POOLING_API_TOKEN")
HOST_ENV = {
    "POSTGRES_PASSWORD": "super-s3cret", "POOLING_WRITER_PASSWORD": "writer-s3cret",
    "POOLING_READER_PASSWORD": "reader-s3cret", "POOLING_API_TOKEN": "token",
}

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    result = compose["services"]
    assert isinstance(result, dict)
    return result


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment as a dict (compose allows a mapping or a KEY=VALUE list)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(k): "" if v is None else str(v) for k, v in raw.items()}


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose-style ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` substitution."""

    def sub(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        current = env.get(name)
        if op in (":-", "-") and (current is None or (op == ":-" and current == "")):
            return arg or ""
        if op in (":?", "?") and (current is None or (op == ":?" and current == "")):
            raise LookupError(f"{name}: {arg}")
        return current or ""

    return _VAR.sub(sub, value)


def settings_aliases() -> set[str]:
    return {f.alias for f in Settings.model_fields.values() if f.alias}


def command(service: Mapping[str, Any]) -> list[str]:
    raw = service["command"]
    return shlex.split(raw) if isinstance(raw, str) else [str(part) for part in raw]


def test_services_exist(services: dict[str, Any]) -> None:
    assert {"kafka", "postgres", "consumer", "api"} <= set(services)


def test_kafka_is_single_node_kraft(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    env = environment(kafka)
    assert kafka["image"] == "apache/kafka:3.9.0"
    assert "controller" in env["KAFKA_PROCESS_ROLES"].split(",")
    assert "broker" in env["KAFKA_PROCESS_ROLES"].split(",")
    assert env["KAFKA_NODE_ID"] in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@")[0]
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert not any(key.startswith("KAFKA_ZOOKEEPER") for key in env)
    for name, service in services.items():
        assert "zookeeper" not in name.lower()
        assert "zookeeper" not in str(service.get("image", "")).lower()
    assert "healthcheck" in kafka


def test_postgres_service(services: dict[str, Any]) -> None:
    postgres = services["postgres"]
    assert str(postgres["image"]).startswith("postgres:18")
    assert "POSTGRES_PASSWORD" in environment(postgres)
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    # postgres:18 images keep data in /var/lib/postgresql/18/docker; the volume goes on the parent.
    targets = [str(v).split(":")[1] for v in postgres["volumes"]]
    assert "/var/lib/postgresql" in targets


def test_app_services_point_at_compose_services(services: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        env = environment(services[name])
        url = urlsplit(interpolate(env["DATABASE_URL"], HOST_ENV))
        assert url.scheme.startswith("postgresql")
        assert url.hostname == "postgres" and url.hostname in services
        assert url.port == 5432
        # every service's DATABASE_URL is the writer's: the ledger never writes as the superuser
        assert (url.username, url.password) == ("pooling_ledger", "writer-s3cret"), name

    bootstrap = environment(services["consumer"])["KAFKA_BOOTSTRAP_SERVERS"]
    hosts = {part.rsplit(":", 1)[0] for part in bootstrap.split(",")}
    assert hosts == {"kafka"}


def test_only_init_connects_as_the_superuser(services: dict[str, Any]) -> None:
    init = services["init"]
    assert command(init) == ["pooling-ledger", "prepare-db"]
    admin = urlsplit(interpolate(environment(init)["DATABASE_ADMIN_URL"], HOST_ENV))
    postgres_password = interpolate(environment(services["postgres"])["POSTGRES_PASSWORD"], HOST_ENV)
    assert (admin.username, admin.password, admin.hostname) == ("postgres", postgres_password, "postgres")
    assert interpolate(environment(init)["POOLING_READER_PASSWORD"], HOST_ENV) == "reader-s3cret"
    assert init["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in WRITER_SERVICES:
        env = {k: interpolate(v, HOST_ENV) for k, v in environment(services[name]).items()}
        assert "DATABASE_ADMIN_URL" not in env, name
        assert not [k for k, v in env.items() if "super-s3cret" in v], name
        assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert interpolate(environment(services["api"])["POOLING_READER_PASSWORD"], HOST_ENV) == "reader-s3cret"


@pytest.mark.parametrize("missing", REQUIRED_SECRETS)
def test_secrets_have_no_default(services: dict[str, Any], missing: str) -> None:
    host_env = {k: v for k, v in HOST_ENV.items() if k != missing}
    values = [v for service in services.values() for v in environment(service).values() if missing in v]
    assert values, f"{missing} is not used"
    for value in values:
        with pytest.raises(LookupError, match=missing):
            interpolate(value, host_env)


def test_consumer_waits_for_healthy_dependencies(services: dict[str, Any]) -> None:
    consumer = services["consumer"]
    depends = consumer["depends_on"]
    for dependency in ("kafka", "postgres"):
        assert depends[dependency]["condition"] == "service_healthy"
        assert "healthcheck" in services[dependency]
    assert consumer["restart"] == "unless-stopped"
    assert command(consumer) == ["pooling-ledger", "consume"]
    assert environment(consumer)["POOLING_LOG_FORMAT"] == "json"


def test_api_service(services: dict[str, Any]) -> None:
    api = services["api"]
    assert command(api) == ["pooling-ledger", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert "8000:8000" in [str(p) for p in api["ports"]]
    assert "postgres" in api["depends_on"]
    assert "POOLING_API_TOKEN" in environment(api)


def test_app_services_build_this_repo(services: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        build = services[name]["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        assert (COMPOSE_FILE.parent / context / "Dockerfile").exists()


def test_app_env_names_are_known_settings(services: dict[str, Any]) -> None:
    known = settings_aliases() | EXTRA_ENV
    for name in APP_SERVICES:
        env = environment(services[name])
        assert set(env) <= known, f"{name}: unknown env vars {set(env) - known}"
        referenced = {m["name"] for value in env.values() for m in _VAR.finditer(value)}
        assert referenced <= EXTRA_ENV, f"{name}: unexpected host variables {referenced}"


def test_app_env_is_valid_settings(services: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        env = {k: interpolate(v, HOST_ENV) for k, v in environment(services[name]).items()}
        settings = Settings.model_validate({k: v for k, v in env.items() if k not in EXTRA_ENV})
        assert settings.database_url == env["DATABASE_URL"]
        assert settings.log_format == "json"


def test_dockerfile_installs_the_package() -> None:
    assert DOCKERFILE.exists()
    text = DOCKERFILE.read_text()
    lines = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim"
    assert re.search(r"^RUN pip install \.(\s|$)", text, re.MULTILINE)
    assert not any(line.startswith("ENTRYPOINT") for line in lines)
    assert any(line.startswith("CMD") and "pooling-ledger" in line for line in lines)

    copied = {
        src.rstrip("/")
        for line in lines
        if line.startswith("COPY ")
        for src in line.split()[1:-1]
        if not src.startswith("--")
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "pyproject.toml" in copied
    assert project["project"]["readme"] in copied  # setuptools needs it to build
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert package in copied, f"Dockerfile does not copy package {package}"
        assert (ROOT / package / "__init__.py").exists()
