"""The Docker files without a Docker engine: lint, compose validation, the image's scripts.

There is no engine to build or run the images here, so the parts are checked one by one:
hadolint on the Dockerfile; compose.yaml interpolated as Compose does, then validated against
the Compose Specification schema and checked for what the stack relies on; and the image's
entry point and health probe run on this machine as the container would run them: with the
image's environment (paths moved into a temporary directory), as a non-root user, with the
repository mounted read-only (when this process may create a mount namespace).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dj_database_url
import pytest
from ruamel.yaml import YAML

from deploy import nginx
from lab.servers import MODES, Server, free_port, interface_of_mode
from tests.support import copy_repository

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE_FILE = REPO / "compose.yaml"
DOCKERIGNORE = REPO / ".dockerignore"
ENTRYPOINT = REPO / "deploy" / "docker" / "entrypoint.sh"
HEALTHCHECK = REPO / "deploy" / "docker" / "healthcheck.py"
VENV_BIN = Path(sys.executable).parent
HADOLINT = VENV_BIN / "hadolint"
CHECK_JSONSCHEMA = VENV_BIN / "check-jsonschema"

# Where the image keeps the code; its paths are moved under a temporary root in the tests.
IMAGE_APP_DIR = "/app"
APP_SERVICES = ("wsgi", "asgi")
# The environment compose needs; fresh random secrets, as a user would generate them.
COMPOSE_ENV = {
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    "POSTGRES_PASSWORD": secrets.token_urlsafe(24),
}
# Bounds for the waits on real processes (never asserted: a bound, not a benchmark).
START_TIMEOUT = 60.0
PROBE_INTERVAL = 0.2


# --- Reading the Dockerfile ----------------------------------------------------------------------


@dataclass
class Instruction:
    """One Dockerfile instruction: its stage name, keyword and argument text."""

    stage: str
    keyword: str
    args: str


def dockerfile_instructions(text: str) -> list[Instruction]:
    """Return the instructions in order, continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    stage = ""
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        # Docker drops comment lines, also in the middle of a continued instruction.
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            stage = args.split(" AS ")[-1].strip() if " AS " in args else args.strip()
        instructions.append(Instruction(stage, keyword.upper(), args.strip()))
    return instructions


def stage_instructions(stage: str, keyword: str) -> list[Instruction]:
    """Return the `keyword` instructions of the Dockerfile's `stage`."""
    every = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    return [i for i in every if i.stage == stage and i.keyword == keyword]


def image_environment(stage: str) -> dict[str, str]:
    """Return the ENV variables the Dockerfile sets in `stage`."""
    environment: dict[str, str] = {}
    for instruction in stage_instructions(stage, "ENV"):
        for pair in shlex.split(instruction.args):
            name, _, value = pair.partition("=")
            environment[name] = value
    return environment


def exec_form(instruction: Instruction) -> list[str]:
    """Return the JSON argument list of an exec-form instruction; fail on shell form."""
    args = instruction.args
    if instruction.keyword == "HEALTHCHECK":
        args = args.partition("CMD ")[2]
    assert args.startswith("["), f"{instruction.keyword} {instruction.args} is in shell form"
    parsed = json.loads(args)
    assert isinstance(parsed, list)
    return [str(item) for item in parsed]


# --- Reading compose.yaml as Compose does --------------------------------------------------------

INTERPOLATION_RE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])"
    r"(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class InterpolationError(ValueError):
    """A ${NAME:?message} whose variable is missing: Compose stops with the message."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Return `text` with ${NAME}, ${NAME:-default}, ${NAME:?error}, ... resolved (Compose spec)."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg = match["op"], interpolate(match["arg"] or "", env)
        value = env.get(name)
        missing = value is None or (op is not None and op.startswith(":") and value == "")
        if op in {"-", ":-"}:
            return arg if missing else str(value)
        if op in {"?", ":?"}:
            if missing:
                raise InterpolationError(f"{name}: {arg}")
            return str(value)
        if op in {"+", ":+"}:
            return "" if missing else arg
        return value or ""

    return INTERPOLATION_RE.sub(replace, text)


def interpolated(node: Any, env: Mapping[str, str]) -> Any:
    """Return a loaded YAML tree with every string interpolated."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: interpolated(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolated(item, env) for item in node]
    return node


def load_compose(env: Mapping[str, str] = COMPOSE_ENV) -> dict[str, Any]:
    """Return compose.yaml as Compose sees it with `env`: YAML 1.2, merge keys, interpolated."""
    document = YAML(typ="safe").load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    tree: dict[str, Any] = interpolated(document, env)
    return tree


DURATION_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(h|ms|us|m|s)")
DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}


def seconds(duration: str) -> float:
    """Return a Compose duration ("1m30s", "20s") in seconds."""
    if not re.fullmatch(rf"(?:{DURATION_PART_RE.pattern})+", duration):
        raise ValueError(f"not a Compose duration: {duration!r}")
    return sum(
        float(number) * DURATION_UNITS[unit] for number, unit in DURATION_PART_RE.findall(duration)
    )


def published_ports(service: Mapping[str, Any]) -> dict[int, tuple[str, int]]:
    """Return {container port: (host address, host port)} from the short port syntax."""
    published = {}
    for entry in service.get("ports", []):
        host_ip, host_port, container_port = str(entry).rsplit(":", 2)
        published[int(container_port)] = (host_ip, int(host_port))
    return published


def service_environment(service: Mapping[str, Any]) -> dict[str, str]:
    """Return a service's environment as a mapping (Compose allows a list of NAME=value too)."""
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {name: "" if value is None else str(value) for name, value in environment.items()}


def gunicorn_setting(mode: str, name: str, env: Mapping[str, str]) -> str:
    """Return a setting of deploy/gunicorn/<mode>.py as gunicorn resolves it under `env`."""
    result = subprocess.run(
        [str(VENV_BIN / "gunicorn"), "--print-config", "-c", f"deploy/gunicorn/{mode}.py"],
        cwd=REPO,
        env={"PATH": f"{VENV_BIN}:/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == name:
            return value.strip()
    raise AssertionError(f"gunicorn --print-config shows no {name}:\n{result.stdout}")


def rendered_docker_nginx() -> str:
    """Return nginx's config as the Dockerfile's build stage renders it."""
    build_env = image_environment("build")
    return nginx.render("docker", {"DJANGO_STATIC_ROOT": build_env["DJANGO_STATIC_ROOT"]})


# --- hadolint ------------------------------------------------------------------------------------


def run_hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    """Run hadolint on `path` (every severity counts, info included)."""
    return subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "info", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dockerfile_has_no_hadolint_findings() -> None:
    result = run_hadolint(DOCKERFILE)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_flags_a_careless_dockerfile(tmp_path: Path) -> None:
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python:latest\nRUN pip install django\nCMD python manage.py\n")
    result = run_hadolint(careless)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3025"):
        assert rule in result.stdout


# --- The Dockerfile's shape ----------------------------------------------------------------------


def test_the_default_target_is_the_app_image_running_as_non_root() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    final_stage = instructions[-1].stage
    assert final_stage == "app"
    for stage in ("app", "nginx"):
        users = stage_instructions(stage, "USER")
        assert users, f"stage {stage} has no USER"
        uid = users[-1].args.split(":")[0]
        # Numeric, so Kubernetes' runAsNonRoot can check it without the image's /etc/passwd.
        assert uid.isdigit(), users[-1]
        assert int(uid) != 0, users[-1]


def test_dependencies_come_from_the_lock_file() -> None:
    runs = " ".join(i.args for i in stage_instructions("build", "RUN"))
    assert "uv sync --locked" in runs
    # Neither dependency group (dev: tests and linters; lab: make up and the benchmark).
    assert "--no-default-groups" in runs
    assert "collectstatic" in runs


def test_entrypoint_and_healthcheck_are_exec_form_and_point_at_the_repo_scripts() -> None:
    for stage in ("app", "nginx"):
        for keyword in ("ENTRYPOINT", "CMD", "HEALTHCHECK"):
            for instruction in stage_instructions(stage, keyword):
                exec_form(instruction)
    (entrypoint,) = stage_instructions("app", "ENTRYPOINT")
    (healthcheck,) = stage_instructions("app", "HEALTHCHECK")
    entry_argv = exec_form(entrypoint)
    probe_argv = exec_form(healthcheck)
    assert entry_argv == [f"{IMAGE_APP_DIR}/{ENTRYPOINT.relative_to(REPO)}"]
    assert probe_argv[1] == f"{IMAGE_APP_DIR}/{HEALTHCHECK.relative_to(REPO)}"
    assert os.access(ENTRYPOINT, os.X_OK)


def test_nginx_serves_the_static_files_where_the_build_puts_them() -> None:
    static_root = image_environment("build")["DJANGO_STATIC_ROOT"]
    copies = [i.args.split() for i in stage_instructions("nginx", "COPY")]
    assert ["--from=build", static_root, static_root] in copies
    assert f"alias {static_root}/;" in rendered_docker_nginx()
    # The app image reads the same STATIC_ROOT (whitenoise and the manifest of hashed names).
    assert image_environment("app")["DJANGO_STATIC_ROOT"] == static_root


def test_the_build_needs_no_frontend_image_from_a_registry() -> None:
    # A `# syntax=` line makes BuildKit pull its frontend from Docker Hub: offline builds fail.
    # The engine's built-in frontend (Docker >= 23) already knows RUN --mount=type=cache.
    first = DOCKERFILE.read_text(encoding="utf-8").splitlines()[0]
    assert not re.match(r"#\s*syntax\s*=", first, re.IGNORECASE), first


def test_the_build_stage_copies_everything_it_renders_from() -> None:
    instructions = [
        i for i in dockerfile_instructions(DOCKERFILE.read_text()) if i.stage == "build"
    ]
    copied = [i.args.split()[0] for i in instructions if i.keyword == "COPY"]
    render = next(n for n, i in enumerate(instructions) if "deploy.nginx" in i.args)
    copied_before = [i.args.split()[0] for i in instructions[:render] if i.keyword == "COPY"]
    # deploy/nginx.py renders nginx/nginx.conf.template.
    assert (REPO / "nginx" / "nginx.conf.template").is_file()
    assert "nginx" in copied_before, copied
    assert {"project", "apps", "deploy", "manage.py"} <= set(copied_before), copied


def test_the_state_directory_is_a_volume_so_a_read_only_run_can_write_it() -> None:
    # `docker run --read-only` with nothing mounted (the README's one-container command) gets
    # an anonymous volume there, owned by the app user like the directory in the image.
    var_dir = image_environment("app")["DJANGO_VAR_DIR"]
    volumes = [i.args for i in stage_instructions("app", "VOLUME")]
    assert volumes == [var_dir]


def test_build_context_leaves_out_local_state_and_secrets() -> None:
    ignored = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "var", ".env"} <= ignored


# --- compose.yaml --------------------------------------------------------------------------------


def validate_compose(
    tmp_path: Path, document: Mapping[str, Any]
) -> subprocess.CompletedProcess[str]:
    """Validate `document` against the Compose Specification schema (check-jsonschema's copy)."""
    instance = tmp_path / "compose.json"
    instance.write_text(json.dumps(document), encoding="utf-8")
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(instance)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_compose_file_is_valid_against_the_compose_specification(tmp_path: Path) -> None:
    # Compose validates after interpolation: check that form, and the file as written.
    result = validate_compose(tmp_path, load_compose())
    assert result.returncode == 0, result.stdout + result.stderr
    raw = YAML(typ="safe").load(COMPOSE_FILE.read_text(encoding="utf-8"))
    result = validate_compose(tmp_path, raw)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_validation_rejects_a_misspelt_compose_file(tmp_path: Path) -> None:
    document = load_compose()
    document["services"]["wsgi"]["healthcheck"]["intervall"] = "5s"
    result = validate_compose(tmp_path, document)
    assert result.returncode != 0
    assert "intervall" in result.stdout + result.stderr


def test_compose_refuses_to_start_without_a_secret_key() -> None:
    with pytest.raises(InterpolationError, match="DJANGO_SECRET_KEY") as error:
        load_compose({"POSTGRES_PASSWORD": COMPOSE_ENV["POSTGRES_PASSWORD"]})
    # The message sends the user to the instructions, which must exist.
    assert "deploy/docker/README.md" in str(error.value)
    assert (REPO / "deploy" / "docker" / "README.md").is_file()


def test_compose_refuses_to_start_without_a_database_password() -> None:
    with pytest.raises(InterpolationError, match="POSTGRES_PASSWORD") as error:
        load_compose({"DJANGO_SECRET_KEY": COMPOSE_ENV["DJANGO_SECRET_KEY"]})
    assert "deploy/docker/README.md" in str(error.value)


def test_each_image_is_built_by_one_service_and_never_pulled() -> None:
    # Compose builds once per service with `build:`: sharing it across services built the app
    # image four times (three dangling images). The services that only run an image must not
    # pull it either: a registry's `dualserve` would be somebody else's.
    services = load_compose()["services"]
    builders: dict[str, list[str]] = {}
    for name, service in services.items():
        if "build" in service:
            builders.setdefault(service["image"], []).append(name)
    assert builders == {"dualserve:latest": ["migrate"], "dualserve-nginx:latest": ["nginx"]}
    for name, service in services.items():
        if service.get("image") in builders:
            assert service["pull_policy"] == "never", name


def test_the_app_uses_the_bundled_postgresql_by_default() -> None:
    services = load_compose()["services"]
    db = services["db"]
    assert re.fullmatch(r"postgres:[0-9]+-bookworm", db["image"]), db["image"]
    environment = service_environment(db)
    (volume,) = db["volumes"]
    assert volume.split(":") == ["db", "/var/lib/postgresql/data"]
    assert "db" in load_compose()["volumes"]
    # Over TCP: the image's first start runs a socket-only server that a socket probe would
    # already call ready.
    test = db["healthcheck"]["test"]
    assert test[:2] == ["CMD", "pg_isready"]
    assert test[test.index("--host") + 1] == "127.0.0.1"
    assert test[test.index("--username") + 1] == environment["POSTGRES_USER"]
    for name in ("migrate", *APP_SERVICES):
        app_env = service_environment(services[name])
        settings = dj_database_url.parse(app_env["DATABASE_URL"])
        assert settings["ENGINE"] == "django.db.backends.postgresql", name
        assert (settings["HOST"], settings["PORT"]) == ("db", 5432), name
        assert (settings["USER"], settings["NAME"]) == (
            environment["POSTGRES_USER"],
            environment["POSTGRES_DB"],
        )
        # No password in the URL (nothing to escape): libpq reads PGPASSWORD.
        assert not settings["PASSWORD"], name
        assert app_env["PGPASSWORD"] == environment["POSTGRES_PASSWORD"]
        assert services[name]["depends_on"]["db"]["condition"] == "service_healthy", name
    assert "ports" not in db


def test_a_database_url_from_the_environment_replaces_the_bundled_one() -> None:
    url = "sqlite:////app/var/db.sqlite3"
    services = load_compose({**COMPOSE_ENV, "DATABASE_URL": url})["services"]
    for name in ("migrate", *APP_SERVICES):
        assert service_environment(services[name])["DATABASE_URL"] == url


def test_the_servers_share_the_bundled_redis_as_their_channel_layer() -> None:
    services = load_compose()["services"]
    redis_service = services["redis"]
    # The official image, built here from Debian's package when no registry is reachable
    # (lab/docker/standins/redis).
    assert re.fullmatch(r"redis:[0-9]+-bookworm", redis_service["image"]), redis_service["image"]
    command = redis_service["command"]
    # Pub/sub only: nothing saved; reached by other containers, without a password.
    assert command[command.index("--save") + 1] == ""
    assert command[command.index("--appendonly") + 1] == "no"
    assert command[command.index("--protected-mode") + 1] == "no"
    assert "ports" not in redis_service
    assert "volumes" not in redis_service
    assert redis_service["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    for name in APP_SERVICES:
        assert service_environment(services[name])["REDIS_URL"] == "redis://redis:6379/0", name
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_a_redis_url_from_the_environment_replaces_the_bundled_one() -> None:
    url = "redis://cache.internal:6379/2"
    services = load_compose({**COMPOSE_ENV, "REDIS_URL": url})["services"]
    for name in APP_SERVICES:
        assert service_environment(services[name])["REDIS_URL"] == url


def test_the_servers_wait_for_migrations_and_nginx_waits_for_healthy_servers() -> None:
    services = load_compose()["services"]
    for name in APP_SERVICES:
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
        assert services[name]["healthcheck"]["test"][-1] == "/readyz"
    for name in APP_SERVICES:
        assert services["nginx"]["depends_on"][name]["condition"] == "service_healthy"
    for name, service in services.items():
        if name != "migrate":
            assert service["healthcheck"]["test"][0] == "CMD", name
            assert "disable" not in service["healthcheck"], name


def test_stop_grace_period_exceeds_gunicorns_graceful_timeout() -> None:
    services = load_compose()["services"]
    for name in APP_SERVICES:
        environment = service_environment(services[name])
        graceful = float(
            gunicorn_setting(environment["SERVE_MODE"], "graceful_timeout", environment)
        )
        assert seconds(services[name]["stop_grace_period"]) > graceful, name


def test_stop_grace_period_covers_every_serving_mode() -> None:
    grace = min(
        seconds(load_compose()["services"][name]["stop_grace_period"]) for name in APP_SERVICES
    )
    for mode in MODES:
        assert grace > float(gunicorn_setting(mode, "graceful_timeout", {})), mode


def test_published_ports_are_make_ups_on_loopback() -> None:
    services = load_compose()["services"]
    published = {
        name: {host for host in published_ports(service).values()}
        for name, service in services.items()
        if "ports" in service
    }
    defaults = nginx.PORT_DEFAULTS
    loopback = "127.0.0.1"
    expected = {
        "nginx": {
            (loopback, defaults["NGINX_HYBRID_PORT"]),
            (loopback, defaults["NGINX_WSGI_PORT"]),
            (loopback, defaults["NGINX_ASGI_PORT"]),
        },
        "wsgi": {(loopback, defaults["WSGI_PORT"])},
        "asgi": {(loopback, defaults["ASGI_PORT"])},
    }
    # showcase:begin
    from lab.up import UPSTREAM_PORT_DEFAULT

    expected["upstream"] = {(loopback, UPSTREAM_PORT_DEFAULT)}
    # showcase:end
    assert published == expected


def test_published_ports_follow_make_ups_variables() -> None:
    names = [*nginx.PORT_DEFAULTS]
    # showcase:begin
    names.append("UPSTREAM_PORT")
    # showcase:end
    chosen = {name: str(20000 + index) for index, name in enumerate(names)}
    services = load_compose({**COMPOSE_ENV, **chosen, "DUALSERVE_PUBLISH_HOST": "0.0.0.0"})
    host_ports = {
        port
        for service in services["services"].values()
        for _, port in published_ports(service).values()
    }
    hosts = {
        host
        for service in services["services"].values()
        for host, _ in published_ports(service).values()
    }
    assert host_ports == {int(port) for port in chosen.values()}
    assert hosts == {"0.0.0.0"}


def test_container_ports_are_where_the_servers_listen_and_nginx_proxies() -> None:
    services = load_compose()["services"]
    config = rendered_docker_nginx()
    for name in APP_SERVICES:
        bind = service_environment(services[name])["BIND"]
        port = int(bind.rsplit(":", 1)[1])
        assert set(published_ports(services[name])) == {port}
        assert f"server {name}:{port};" in config
    listens = {int(port) for port in re.findall(r"listen [0-9.]+:([0-9]+);", config)}
    assert set(published_ports(services["nginx"])) == listens


def test_every_container_has_a_read_only_root_and_a_tmpfs_for_tmp() -> None:
    services = load_compose()["services"]
    var_dir = image_environment("app")["DJANGO_VAR_DIR"]
    for name, service in services.items():
        assert service["read_only"] is True, name
        assert "/tmp" in service["tmpfs"], name
    for name in ("migrate", *APP_SERVICES):
        targets = [volume.split(":")[1] for volume in services[name]["volumes"]]
        assert var_dir in targets, name


def test_servers_trust_forwarded_headers_from_nginx_only() -> None:
    document = load_compose()
    services = document["services"]
    nginx_address = services["nginx"]["networks"]["backend"]["ipv4_address"]
    (pool,) = document["networks"]["backend"]["ipam"]["config"]
    dynamic_from = int(pool["ip_range"].split("/")[0].rsplit(".", 1)[1])
    for name in APP_SERVICES:
        assert service_environment(services[name])["FORWARDED_ALLOW_IPS"] == nginx_address
    for name, service in services.items():
        if "networks" in service and isinstance(service["networks"], dict):
            address = service["networks"]["backend"]["ipv4_address"]
            # Fixed addresses stay outside the range Docker hands out (migrate's).
            assert int(address.rsplit(".", 1)[1]) < dynamic_from, name


# --- The image's scripts, outside Docker ---------------------------------------------------------


@dataclass
class Sandbox:
    """A temporary root standing in for the container: its user, paths and mounts."""

    root: Path
    uid: int
    gid: int
    read_only_repo: bool
    hidden: list[tuple[Path, list[Path]]] = field(default_factory=list)
    # When set, the whole machine is read-only in the sandbox but these (and /dev, /proc, /sys,
    # as in a container): compose's `read_only: true` with its tmpfs and volumes.
    writable: list[Path] = field(default_factory=list)

    @property
    def description(self) -> str:
        """Return how this sandbox isolates, for failure messages."""
        return (
            f"uid={self.uid}, read-only repository={self.read_only_repo}, "
            f"writable only={[str(p) for p in self.writable] or 'not enforced'}"
        )

    def mount_script(self) -> list[str]:
        """Return the shell lines that set up the sandbox's mounts in a new mount namespace."""
        quote = shlex.quote
        script = ["set -eu", f"mount --bind -o ro {quote(str(REPO))} {quote(str(REPO))}"]
        # A directory the sandbox user may not enter (root's 0700 home holding the Python
        # install, say) is covered with an empty tmpfs, and only what must be reached is put
        # back into it: the container's user sees no more of this machine than it needs.
        for index, (ancestor, keep) in enumerate(self.hidden):
            stages = [self.root / "mnt" / f"{index}-{n}" for n in range(len(keep))]
            for path, stage_dir in zip(keep, stages, strict=True):
                stage_dir.mkdir(parents=True, exist_ok=True)
                script.append(f"mount --bind {quote(str(path))} {quote(str(stage_dir))}")
            script.append(f"mount -t tmpfs -o mode=0755 tmpfs {quote(str(ancestor))}")
            for path, stage_dir in zip(keep, stages, strict=True):
                script.append(f"mkdir -p {quote(str(path))}")
                script.append(f"mount --bind {quote(str(stage_dir))} {quote(str(path))}")
        if self.writable:
            script.extend(f"mount --bind {quote(str(p))} {quote(str(p))}" for p in self.writable)
            kept = "|".join(
                ["/proc", "/proc/*", "/sys", "/sys/*", "/dev", "/dev/*"]
                + [quote(str(p)) for p in self.writable]
            )
            # Every other mount that is writable becomes read-only (in this namespace only);
            # set -e makes a mount that refuses fail the sandbox instead of staying writable.
            script.append(
                "for mp in $(awk '$6 ~ /^rw/ {print $5}' /proc/self/mountinfo); do "
                f'case "$mp" in {kept}) ;; *) mount -o remount,bind,ro "$mp" ;; esac; done'
            )
        return script

    def as_user(self, argv: list[str], user: tuple[int, int] | None = None) -> list[str]:
        """Return `argv` run as the sandbox user (or `user`), through setpriv when needed."""
        uid, gid = user or (self.uid, self.gid)
        if uid == os.geteuid():
            return argv
        return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *argv]

    def command(self, argv: list[str]) -> list[str]:
        """Return `argv` wrapped to run as the sandbox user, in its mount namespace."""
        if not self.read_only_repo:
            return self.as_user(argv)
        script = [*self.mount_script(), 'exec "$@"']
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "\n".join(script),
            "sandbox",
            *self.as_user(argv),
        ]

    def environment(self, service: str, **overrides: str) -> dict[str, str]:
        """Return the container's environment for a compose service, paths moved here."""
        image_env = image_environment("app")
        moves = {
            f"{IMAGE_APP_DIR}/var": str(self.root / "var"),
            f"{IMAGE_APP_DIR}/static": str(self.root / "static"),
            "/tmp": str(self.root / "tmp"),
        }
        environment = {}
        for name, value in {
            **image_env,
            **service_environment(load_compose()["services"][service]),
        }.items():
            environment[name] = moves.get(value, value)
        environment["PATH"] = f"{VENV_BIN}:/usr/bin:/bin"
        # The container's /tmp is a tmpfs of its own; here the sandbox's directory stands in.
        environment["TMPDIR"] = str(self.root / "tmp")
        # No db service here: SQLite in the sandbox's var stands in for compose's PostgreSQL
        # (`make docker-test` runs the real one).
        environment["DATABASE_URL"] = ""
        environment.update(overrides)
        return environment

    def run(
        self, argv: list[str], env: Mapping[str, str], timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the sandbox to completion."""
        return subprocess.run(
            self.command(argv),
            env=dict(env),
            cwd="/",
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def image_user() -> tuple[int, int]:
    """Return the UID and GID the app image runs as (its last USER)."""
    user = stage_instructions("app", "USER")[-1].args
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


def can_unshare_mounts() -> bool:
    """Return whether this process may create a mount namespace (root with CAP_SYS_ADMIN)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"],
        capture_output=True,
        timeout=10,
        check=False,
    )
    return result.returncode == 0


def closed_ancestor(path: Path) -> Path | None:
    """Return the outermost directory above `path` that others may not enter, if any."""
    for ancestor in reversed(path.parents):
        if not ancestor.stat().st_mode & stat.S_IXOTH:
            return ancestor
    return None


def hidden_directories(keep: list[Path]) -> list[tuple[Path, list[Path]]]:
    """Group the paths the sandbox user must reach under the closed directories above them."""
    groups: dict[Path, list[Path]] = {}
    for path in keep:
        ancestor = closed_ancestor(path)
        if ancestor is not None:
            groups.setdefault(ancestor, []).append(path)
    return list(groups.items())


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """Yield a sandbox: the image's user with a read-only repository when root, else this user.

    The image's UID owns nothing else on this machine, so every file it leaves is ours to find.
    """
    # Not under /tmp: the pod test covers /tmp with a tmpfs of its own, as compose does.
    root = Path(tempfile.mkdtemp(prefix="dualserve-docker-", dir="/var/tmp"))
    try:
        if os.geteuid() == 0:
            uid, gid = image_user()
            isolate = can_unshare_mounts()
        else:
            uid, gid, isolate = os.geteuid(), os.getegid(), False
        keep = [Path(os.path.realpath(sys.base_prefix)), REPO, VENV_BIN.parent.resolve()]
        box = Sandbox(root, uid, gid, isolate, hidden_directories(keep) if isolate else [])
        for name in ("var", "tmp", "static"):
            (root / name).mkdir()
        if os.geteuid() == 0:
            os.chmod(root, 0o755)
            for name in ("var", "tmp"):
                os.chown(root / name, uid, gid)
        yield box
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def collected_static(sandbox: Sandbox) -> Path:
    """Collect the static files into the sandbox, as the image's build stage does."""
    build_var = sandbox.root / "build-var"
    result = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
        cwd=REPO,
        env={
            "PATH": f"{VENV_BIN}:/usr/bin:/bin",
            "DJANGO_STATIC_ROOT": str(sandbox.root / "static"),
            "DJANGO_VAR_DIR": str(build_var),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    shutil.rmtree(build_var)
    return sandbox.root / "static"


def files_owned_by(uid: int, directory: Path, since: float) -> list[Path]:
    """Return the entries of `directory` (not recursive) that `uid` created after `since`."""
    found = []
    for entry in directory.iterdir():
        try:
            info = entry.lstat()
        except FileNotFoundError:
            continue
        if info.st_uid == uid and info.st_ctime >= since:
            found.append(entry)
    return found


def repo_files_owned_by(uid: int) -> list[Path]:
    """Return the files under the repository that belong to `uid`."""
    found = []
    for directory, dirnames, filenames in os.walk(REPO):
        dirnames[:] = [d for d in dirnames if d not in {".git", ".venv"}]
        for name in [*dirnames, *filenames]:
            path = Path(directory, name)
            try:
                if path.lstat().st_uid == uid:
                    found.append(path)
            except FileNotFoundError:
                continue
    return found


def start_entrypoint(
    box: Sandbox, env: Mapping[str, str], log: Path, argv: list[str] | None = None
) -> Server:
    """Start the image's entry point in the sandbox, in a session of its own."""
    port = int(env.get("BIND", ":0").rsplit(":", 1)[1])
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            box.command([str(ENTRYPOINT), *(argv or [])]),
            env=dict(env),
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server([str(ENTRYPOINT)], process, port, log)


def probe(box: Sandbox, env: Mapping[str, str], path: str) -> subprocess.CompletedProcess[str]:
    """Run the image's health probe in the sandbox, as Docker's HEALTHCHECK does."""
    return box.run(["python", str(HEALTHCHECK), path], env, timeout=30)


def wait_until_probe_passes(
    box: Sandbox, server: Server, env: Mapping[str, str], path: str
) -> None:
    """Return once the health probe exits 0 for `path`; fail if the server exits or never passes."""
    deadline = time.monotonic() + START_TIMEOUT
    result = None
    while time.monotonic() < deadline:
        assert server.running(), f"the server exited ({box.description}):\n{server.tail()}"
        result = probe(box, env, path)
        if result.returncode == 0:
            return
        time.sleep(PROBE_INTERVAL)
    detail = result.stderr if result else "never probed"
    pytest.fail(f"{path} never became healthy ({detail}):\n{server.tail()}")


def process_uid(pid: int) -> int:
    """Return the real UID of process `pid`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for process {pid}")


def child_pids(pid: int) -> list[int]:
    """Return the PIDs of the direct children of `pid`."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


def alive(pid: int) -> bool:
    """Return whether process `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in {"Z", "X"}


def first_static_file(static_root: Path) -> str:
    """Return the URL path of one hashed static file from the manifest collectstatic wrote."""
    manifest = json.loads((static_root / "staticfiles.json").read_text(encoding="utf-8"))
    hashed = sorted(manifest["paths"].values())[0]
    return f"/static/{hashed}"


@pytest.mark.serving
@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_entrypoint_serves_each_mode_in_a_read_only_sandbox_and_stops_on_sigterm(
    mode: str, sandbox: Sandbox, collected_static: Path
) -> None:
    port = free_port()
    service = "wsgi" if interface_of_mode(mode) == "wsgi" else "asgi"
    # One worker: once it answers the probe its event loop runs. With two, SIGTERM could reach
    # the second while it boots, where gunicorn's asgi worker on uvloop loses it (uvloop drops
    # a signal that arrives between add_signal_handler and the loop's start) and the master
    # waits out graceful_timeout, then SIGKILLs it: a gunicorn race, not this image's.
    env = sandbox.environment(
        service,
        SERVE_MODE=mode,
        BIND=f"127.0.0.1:{port}",
        DJANGO_MIGRATE="true",
        WEB_CONCURRENCY="1",
    )
    if sandbox.read_only_repo:
        # compose's read_only: true, with a tmpfs on /tmp and a volume on var.
        sandbox.writable = [sandbox.root / "var", sandbox.root / "tmp"]
    started = time.time()
    server = start_entrypoint(sandbox, env, sandbox.root / "server.log")
    try:
        wait_until_probe_passes(sandbox, server, env, "/readyz")

        # exec all the way down: the PID started is gunicorn's master, not a shell around it.
        argv = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
        assert any(arg.endswith(b"/gunicorn") for arg in argv), argv
        assert f"deploy/gunicorn/{mode}.py".encode() in argv
        assert process_uid(server.pid) == sandbox.uid
        workers = child_pids(server.pid)
        assert workers
        # Neither the master nor any worker runs as root (the image's USER, or this user).
        assert sandbox.uid != 0
        assert {process_uid(pid) for pid in workers} == {sandbox.uid}

        if sandbox.read_only_repo:
            # The harness holds: what the server could not write, it did not write. The
            # world-writable directories of this machine are read-only in there too.
            for place in (REPO, Path("/var/tmp"), Path("/tmp")):
                refused = sandbox.run(["touch", str(place / "sandbox-probe")], env)
                assert "Read-only file system" in refused.stderr, place
            allowed = sandbox.run(["touch", str(sandbox.root / "tmp" / "sandbox-probe")], env)
            assert allowed.returncode == 0, allowed.stderr

        # The baked static files are served from the read-only STATIC_ROOT.
        url = f"http://127.0.0.1:{port}{first_static_file(collected_static)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
        assert (sandbox.root / "var" / "db.sqlite3").stat().st_uid == sandbox.uid

        server.send_signal(signal.SIGTERM)
        graceful = float(gunicorn_setting(mode, "graceful_timeout", env))
        assert server.wait_exit(graceful + 10), f"still running after SIGTERM:\n{server.tail()}"
        assert server.process.wait() == 0, server.tail()
        assert [pid for pid in workers if alive(pid)] == [], server.tail()
    finally:
        server.kill()
    output = server.output()
    assert "Traceback" not in output, output
    # Drained, not killed: the worker finished on SIGTERM within graceful_timeout.
    assert "SIGKILL" not in output, output
    # The only writes: the sandbox's var and tmp (gunicorn's heartbeat files are unlinked at once).
    if sandbox.uid != os.geteuid():
        assert repo_files_owned_by(sandbox.uid) == []
        for shared in (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")):
            if shared.is_dir():
                assert files_owned_by(sandbox.uid, shared, started) == [], shared
    # No control socket left in HOME: gunicorn's is off in every mode.
    home = Path(env["HOME"])
    assert not (home / ".gunicorn").exists()


@pytest.mark.serving
def test_probes_tell_liveness_from_readiness_before_migrations(
    sandbox: Sandbox, collected_static: Path
) -> None:
    port = free_port()
    env = sandbox.environment("wsgi", SERVE_MODE="wsgi_sync", BIND=f"127.0.0.1:{port}")
    server = start_entrypoint(sandbox, env, sandbox.root / "server.log")
    try:
        wait_until_probe_passes(sandbox, server, env, "/healthz")
        not_ready = probe(sandbox, env, "/readyz")
        assert not_ready.returncode == 1
        assert "503" in not_ready.stderr
        assert "unapplied migrations" in not_ready.stderr
    finally:
        server.stop()


@pytest.mark.serving
def test_compose_migrate_command_runs_through_the_entrypoint(sandbox: Sandbox) -> None:
    command = load_compose()["services"]["migrate"]["command"]
    env = sandbox.environment("migrate")
    result = sandbox.run([str(ENTRYPOINT), *command], env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (sandbox.root / "var" / "db.sqlite3").is_file()


# showcase:begin
@pytest.mark.serving
def test_compose_upstream_command_runs_through_the_entrypoint(sandbox: Sandbox) -> None:
    service = load_compose()["services"]["upstream"]
    port = free_port()
    command = list(service["command"])
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    env = sandbox.environment("upstream", BIND=f"127.0.0.1:{port}")
    server = start_entrypoint(sandbox, env, sandbox.root / "upstream.log", command)
    try:
        wait_until_probe_passes(sandbox, server, env, service["healthcheck"]["test"][-1])
    finally:
        server.stop()


# showcase:end


def test_entrypoint_refuses_an_unknown_serving_mode(sandbox: Sandbox) -> None:
    for mode in ("nope", "../gunicorn/common", "common", "WSGI_SYNC"):
        env = sandbox.environment("wsgi", SERVE_MODE=mode)
        result = sandbox.run([str(ENTRYPOINT)], env)
        assert result.returncode == 64, (mode, result.stderr)
        assert f"SERVE_MODE='{mode}' is not a serving mode" in result.stderr
        for known in MODES:
            assert known in result.stderr


def test_entrypoint_refuses_a_migrate_flag_that_is_not_a_boolean(sandbox: Sandbox) -> None:
    env = sandbox.environment("wsgi", DJANGO_MIGRATE="maybe")
    result = sandbox.run([str(ENTRYPOINT)], env)
    assert result.returncode == 64
    assert "DJANGO_MIGRATE='maybe' is not a boolean" in result.stderr


def test_entrypoint_runs_a_given_command_from_the_app_directory(sandbox: Sandbox) -> None:
    env = sandbox.environment("wsgi")
    result = sandbox.run([str(ENTRYPOINT), "python", "-c", "import os; print(os.getcwd())"], env)
    assert (result.returncode, result.stdout.strip()) == (0, str(REPO))


def test_healthcheck_fails_when_nothing_listens(sandbox: Sandbox) -> None:
    env = sandbox.environment("wsgi", BIND=f"0.0.0.0:{free_port()}")
    result = probe(sandbox, env, "/healthz")
    assert result.returncode == 1
    assert "unhealthy" in result.stderr
    assert "ConnectionRefusedError" in result.stderr


def test_healthcheck_rejects_a_path_without_a_slash(sandbox: Sandbox) -> None:
    result = probe(sandbox, sandbox.environment("wsgi"), "healthz")
    assert result.returncode == 1
    assert "usage" in result.stderr


# --- The compose stack, without an engine ---------------------------------------------------------

# Run inside the pod: each request of the stack, and what answered it.
POD_CLIENT = """
import json, sys, urllib.error, urllib.request
answers = {}
for name, url in json.loads(sys.argv[1]).items():
    request = urllib.request.Request(url, headers={"Host": "localhost"})
    try:
        response = urllib.request.urlopen(request, timeout=20)
    except urllib.error.HTTPError as error:  # an error page is an answer too
        response = error
    with response:
        answers[name] = {
            "status": response.code,
            "interface": response.headers.get("X-Interface"),
            "cache_control": response.headers.get("Cache-Control"),
            "body": response.read(200).decode("utf-8", "replace"),
        }
print(json.dumps(answers))
"""


def require_pod() -> str:
    """Return nginx's binary when a pod can be built here; fail under CI=true, else skip."""
    binary = nginx.nginx_binary(os.environ)
    missing = []
    if binary is None:
        missing.append(nginx.INSTALL_HINT)
    if not can_unshare_mounts() or shutil.which("ip") is None or shutil.which("nsenter") is None:
        missing.append("root with network and mount namespaces (unshare, nsenter, ip)")
    if missing:
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail("CI=true and this needs " + "; ".join(missing))
        pytest.skip("needs " + "; ".join(missing))
    assert binary is not None
    return binary


def tmpfs_over_tmp(box: Sandbox) -> list[str]:
    """Return the shell lines that cover /tmp with a tmpfs, as compose does, keeping the
    repository reachable when the checkout itself lives under /tmp (a CI clone may)."""
    quote = shlex.quote
    if Path("/tmp") not in REPO.parents:
        return ["mount -t tmpfs -o mode=1777 tmpfs /tmp"]
    stage = box.root / "mnt" / "repository"
    stage.mkdir(parents=True, exist_ok=True)
    return [
        f"mount --bind -o ro {quote(str(REPO))} {quote(str(stage))}",
        "mount -t tmpfs -o mode=1777 tmpfs /tmp",
        f"mkdir -p {quote(str(REPO))}",
        f"mount --bind -o ro {quote(str(stage))} {quote(str(REPO))}",
    ]


@dataclass
class Pod:
    """compose's network on this machine: one network namespace whose loopback carries every
    service on its compose port, service names in /etc/hosts, a tmpfs on /tmp, the sandbox's
    read-only mounts; a holder process keeps the namespaces alive."""

    box: Sandbox
    holder: subprocess.Popen[bytes]

    @classmethod
    def start(cls, box: Sandbox, names: list[str]) -> Pod:
        """Create the namespaces and return once they are set up."""
        hosts = box.root / "hosts"
        hosts.write_text(f"127.0.0.1 localhost {' '.join(names)}\n::1 localhost\n")
        ready = box.root / "pod-ready"
        script = [
            *box.mount_script(),
            "ip link set lo up",
            f"mount --bind {shlex.quote(str(hosts))} /etc/hosts",
            *tmpfs_over_tmp(box),
            f"touch {shlex.quote(str(ready))}",
            # Bounded: the test kills it long before.
            "exec sleep 600",
        ]
        holder = subprocess.Popen(
            [
                "unshare",
                "--net",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                "\n".join(script),
            ],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        pod = cls(box, holder)
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert holder.poll() is None, "the pod's namespaces could not be set up"
            assert time.monotonic() < deadline, "the pod never became ready"
            time.sleep(0.05)
        return pod

    def command(self, argv: list[str], user: tuple[int, int] | None = None) -> list[str]:
        """Return `argv` run inside the pod as the sandbox user (or `user`)."""
        enter = ["nsenter", f"--target={self.holder.pid}", "--net", "--mount", "--"]
        return [*enter, *self.box.as_user(argv, user)]

    def run(
        self, argv: list[str], env: Mapping[str, str], timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the pod to completion."""
        return subprocess.run(
            self.command(argv),
            env=dict(env),
            cwd="/",
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start_process(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str],
        user: tuple[int, int] | None = None,
    ) -> Server:
        """Start a long-running service in the pod, in a session of its own."""
        log = self.box.root / f"{name}.log"
        log.touch()
        uid, gid = user or (self.box.uid, self.box.gid)
        # nginx reopens /dev/stdout by path: its user must be allowed to open the log file.
        os.chown(log, uid, gid)
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                self.command(argv, user),
                env=dict(env),
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return Server([name], process, 0, log)

    def wait_healthy(self, server: Server, test: list[str], env: Mapping[str, str]) -> None:
        """Run a compose healthcheck test (CMD form) in the pod until it exits 0."""
        assert test[0] == "CMD"
        argv = [
            arg.replace(f"{IMAGE_APP_DIR}/", f"{REPO}/", 1)
            if arg.startswith(f"{IMAGE_APP_DIR}/")
            else arg
            for arg in test[1:]
        ]
        deadline = time.monotonic() + START_TIMEOUT
        result = None
        while time.monotonic() < deadline:
            assert server.running(), f"{server.argv[0]} exited:\n{server.tail()}"
            result = self.run(argv, env, timeout=30)
            if result.returncode == 0:
                return
            time.sleep(PROBE_INTERVAL)
        detail = result.stderr if result else "never probed"
        pytest.fail(f"{server.argv[0]} never became healthy ({detail}):\n{server.tail()}")

    def stop(self) -> None:
        """End the holder, and with it the namespaces once every service has exited."""
        if self.holder.poll() is None:
            os.killpg(self.holder.pid, signal.SIGKILL)
        self.holder.wait()


@pytest.mark.serving
@pytest.mark.slow
def test_compose_stack_serves_through_nginx_in_a_pod(
    sandbox: Sandbox, collected_static: Path
) -> None:
    binary = require_pod()
    compose = load_compose()
    services = compose["services"]
    pod = Pod.start(sandbox, list(services))
    running: list[tuple[Server, int]] = []
    try:
        # compose's order: migrate to completion, then the servers, then nginx once they are
        # healthy. Inside the pod nginx reaches the servers from 127.0.0.1, not from its
        # compose address: the only value changed (besides the sandbox's SQLite for the db).
        env = {
            name: sandbox.environment(name, FORWARDED_ALLOW_IPS="127.0.0.1")
            for name in services
            if name != "nginx"
        }
        migrate = pod.run(
            [str(ENTRYPOINT), *services["migrate"]["command"]], env["migrate"], timeout=120
        )
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        # The app image's long-running services (db: the pod uses the sandbox's SQLite).
        processes = [*APP_SERVICES]
        # showcase:begin
        processes.append("upstream")
        # showcase:end
        for name in processes:
            server = pod.start_process(
                name, [str(ENTRYPOINT), *services[name].get("command", [])], env[name]
            )
            running.append((server, signal.SIGTERM))
        for server, _ in running:
            name = server.argv[0]
            pod.wait_healthy(server, services[name]["healthcheck"]["test"], env[name])

        # nginx as its image runs it: the Docker config (static files from the sandbox), the
        # image's user and arguments, stopped with SIGQUIT (the nginx image's STOPSIGNAL).
        config = sandbox.root / "nginx.conf"
        # Built with a project's prefix listed (NGINX_ASGI_PREFIXES, a build argument): the
        # admin's pages stand in for a project's async views, on the hybrid entry.
        config.write_text(
            nginx.render(
                "docker",
                {"DJANGO_STATIC_ROOT": str(collected_static), "NGINX_ASGI_PREFIXES": "/admin/"},
            )
        )
        (entrypoint,) = stage_instructions("nginx", "ENTRYPOINT")
        (cmd,) = stage_instructions("nginx", "CMD")
        argv = [binary, *exec_form(entrypoint)[1:], "-c", str(config), *exec_form(cmd)]
        nginx_user = stage_instructions("nginx", "USER")[-1].args.split(":")
        user = (int(nginx_user[0]), int(nginx_user[1]))
        proxy = pod.start_process("nginx", argv, {"PATH": "/usr/sbin:/usr/bin:/bin"}, user)
        running.append((proxy, signal.SIGQUIT))
        pod.wait_healthy(proxy, services["nginx"]["healthcheck"]["test"], {"PATH": "/usr/bin:/bin"})

        assert process_uid(proxy.pid) == user[0]
        assert {process_uid(server.pid) for server, _ in running[:-1]} == {sandbox.uid}

        def url(service: str, host_port: int, path: str) -> str:
            """Return the URL, inside the pod, of what compose publishes on `host_port`."""
            (container_port,) = [
                inside
                for inside, (_, outside) in published_ports(services[service]).items()
                if outside == host_port
            ]
            return f"http://127.0.0.1:{container_port}{path}"

        port = nginx.PORT_DEFAULTS
        page = "/admin/login/"
        urls = {
            "wsgi_entry": url("nginx", port["NGINX_WSGI_PORT"], page),
            "asgi_entry": url("nginx", port["NGINX_ASGI_PORT"], page),
            "hybrid_listed": url("nginx", port["NGINX_HYBRID_PORT"], page),
            # A path no view has: Django's 404, from WSGI (the probes carry no X-Interface).
            "hybrid_rest": url("nginx", port["NGINX_HYBRID_PORT"], "/no-such-page/"),
            "wsgi_direct": url("wsgi", port["WSGI_PORT"], page),
            "asgi_direct": url("asgi", port["ASGI_PORT"], page),
            # showcase:begin
            # The app reaches the upstream service by its compose name.
            "upstream_by_name": url("nginx", port["NGINX_WSGI_PORT"], "/sync/upstream/?ms=5"),
            # showcase:end
            "static": url("nginx", port["NGINX_HYBRID_PORT"], first_static_file(collected_static)),
        }
        client = pod.run(
            ["python", "-c", POD_CLIENT, json.dumps(urls)], {"PATH": f"{VENV_BIN}:/usr/bin:/bin"}
        )
        assert client.returncode == 0, client.stderr + "\n" + proxy.tail()
        answers = json.loads(client.stdout)
        assert {name: answer["status"] for name, answer in answers.items()} == {
            **dict.fromkeys(urls, 200),
            "hybrid_rest": 404,
        }
        interfaces = {
            name: answers[name]["interface"]
            for name in urls
            if name not in {"static", "upstream_by_name"}
        }
        assert interfaces == {
            "wsgi_entry": "wsgi",
            "asgi_entry": "asgi",
            "hybrid_listed": "asgi",
            "hybrid_rest": "wsgi",
            "wsgi_direct": "wsgi",
            "asgi_direct": "asgi",
        }
        assert "immutable" in answers["static"]["cache_control"]

        # docker compose down: every service's stop signal, and a clean exit from each.
        for server, signum in running:
            server.send_signal(signum)
        for server, _ in running:
            assert server.wait_exit(30), server.tail()
            assert server.process.wait() == 0, server.tail()
    finally:
        for server, _ in running:
            server.kill()
        pod.stop()


# --- The build step runs with production settings -----------------------------------------------

DEV_ONLY_APP = "dev_only_toolbar"


def dockerfile_collectstatic_command() -> str:
    """Return the Dockerfile's collectstatic command, as the build stage's shell runs it."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    (run,) = [
        line for line in text.splitlines() if line.startswith("RUN ") and "collectstatic" in line
    ]
    return run.removeprefix("RUN ").split(" && ")[0].strip()


def test_the_image_builds_with_an_app_installed_for_development_only(tmp_path: Path) -> None:
    """A project gates a dev-only app on DEBUG (django-debug-toolbar's docs): the image lacks it."""
    project = copy_repository(tmp_path / "project")
    settings = project / "project" / "settings.py"
    settings.write_text(
        settings.read_text() + f"\nif DEBUG:\n    INSTALLED_APPS.append({DEV_ONLY_APP!r})\n"
    )
    # The build stage's .venv: this suite's, which has no such app either.
    (project / ".venv").symlink_to(Path(sys.executable).parents[1])
    env = {
        "PATH": os.environ["PATH"],
        "DJANGO_STATIC_ROOT": str(tmp_path / "static"),
    }
    build = subprocess.run(
        ["sh", "-c", dockerfile_collectstatic_command()],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    assert (tmp_path / "static" / "staticfiles.json").is_file()
    # The same settings in development do import it, and fail where it is not installed.
    development = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=project,
        env={**env, "DJANGO_VAR_DIR": str(tmp_path / "var")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert f"No module named '{DEV_ONLY_APP}'" in development.stderr
