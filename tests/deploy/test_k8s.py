"""deploy/k8s: the manifests are valid Kubernetes objects and agree with what they deploy.

Every kustomization (the base and each overlay) is rendered and validated offline against the
Kubernetes API schemas that kubernetes-validate ships. Then the rendered objects are checked
against their sources of truth: the variables project/settings.py, the gunicorn configs and the
entry point read; the ports and graceful timeout of the serving modes (printed by gunicorn
itself, in the pod's environment); the image's user and writable paths (the Dockerfile); the
hybrid routing of deploy/nginx.py; compose.yaml's migrate command. The pods' environments
really serve: the migrate Job's command and each Deployment's server run here, through the
image's entry point, and answer the probes.

No kustomize needed: `render` applies the kustomization fields the overlays use (resources,
namespace, images, patches) and refuses any other. Where kubectl is installed, one test checks
that `kubectl kustomize` renders exactly the same objects.
"""

from __future__ import annotations

import ast
import http.client
import re
import secrets
import shlex
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from ruamel.yaml import YAML

from deploy import nginx
from lab.servers import (
    INHERITED_SETTINGS,
    MODES,
    gunicorn_executable,
    interface_of_mode,
    merged_environment,
    mode_config,
    start,
)

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
SECRET_EXAMPLE = K8S / "secret.example.yaml"
KUSTOMIZATIONS = sorted(path.parent for path in K8S.rglob("kustomization.yaml"))
DOCKERFILE = REPO / "Dockerfile"
COMPOSE_FILE = REPO / "compose.yaml"
ENTRYPOINT = REPO / "deploy" / "docker" / "entrypoint.sh"
SETTINGS = REPO / "project" / "settings.py"
GUNICORN_CONFIGS = sorted((REPO / "deploy" / "gunicorn").glob("*.py"))
APP_STAGE = "app"

# The newest API the schemas ship, and an older one managed clusters still run.
KUBERNETES_VERSIONS = ("1.30", "1.37")
# What `render` understands; anything else in a kustomization fails the suite, never passes
# unapplied.
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
CLUSTER_SCOPED = {"Namespace"}
WORKLOADS = {"Deployment", "Job"}
RECOMMENDED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)
INGRESS_NGINX = "nginx.ingress.kubernetes.io/"
# What a kubelet probe sends as Host: the pod's address and the container port.
POD_ADDRESS = "10.244.1.7"
# Bounds for the real processes below (never asserted: a bound, not a benchmark).
COMMAND_TIMEOUT = 120.0
START_TIMEOUT = 60.0

yaml = YAML(typ="safe", pure=True)

Object = dict[str, Any]


# --- Rendering a kustomization ---------------------------------------------------------------


def load_documents(text: str) -> list[Object]:
    """Return the YAML documents of `text`, empty ones left out."""
    return [document for document in yaml.load_all(text) if document is not None]


def load_file(path: Path) -> list[Object]:
    """Return the YAML documents of the file at `path`."""
    return load_documents(path.read_text(encoding="utf-8"))


def render(directory: Path) -> list[Object]:
    """Return the objects the kustomization in `directory` builds, as kustomize would."""
    kustomization = load_file(directory / "kustomization.yaml")[0]
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    if unknown:
        raise NotImplementedError(
            f"{directory}/kustomization.yaml: {sorted(unknown)} not applied by this test's "
            "renderer: teach `render` the field, and check it against `kubectl kustomize`."
        )
    objects: list[Object] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        objects += render(path) if path.is_dir() else load_file(path)
    for patch in kustomization.get("patches", []):
        apply_patch(objects, directory, patch)
    namespace = kustomization.get("namespace")
    for obj in objects:
        if namespace and obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace
    for image in kustomization.get("images", []):
        for container in containers(objects):
            container["image"] = renamed_image(container["image"], image)
    return objects


def apply_patch(objects: list[Object], directory: Path, entry: Object) -> None:
    """Apply one `patches` entry: a JSON 6902 list of operations, or a strategic merge."""
    target = entry.get("target", {})
    if set(entry) - {"path", "target"} or set(target) - {"kind", "name"}:
        raise NotImplementedError(f"{directory}: patch {entry} not applied by this renderer")
    body = yaml.load((directory / entry["path"]).read_text(encoding="utf-8"))
    if isinstance(body, dict):
        target = {"kind": body["kind"], "name": body["metadata"]["name"], **target}
    matched = [
        obj
        for obj in objects
        if obj["kind"] == target.get("kind", obj["kind"])
        and obj["metadata"]["name"] == target.get("name", obj["metadata"]["name"])
    ]
    assert matched, f"{directory}: patch {entry['path']} matches no object"
    for obj in matched:
        if isinstance(body, list):
            for operation in body:
                apply_operation(obj, operation)
        else:
            merge(obj, body)


def apply_operation(obj: Object, operation: Object) -> None:
    """Apply one JSON patch operation (RFC 6902: add, replace, remove) to `obj`."""
    *parents, last = [
        part.replace("~1", "/").replace("~0", "~") for part in operation["path"].split("/")[1:]
    ]
    node: Any = obj
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    op = operation["op"]
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if op == "add":
            node.insert(index, operation["value"])
        elif op == "replace":
            node[index] = operation["value"]
        elif op == "remove":
            del node[index]
        else:
            raise NotImplementedError(f"JSON patch op {op!r}")
    elif op == "add" or (op == "replace" and last in node):
        node[last] = operation["value"]
    elif op == "remove":
        del node[last]
    else:
        raise NotImplementedError(f"JSON patch op {op!r} on {operation['path']}")


def merge(into: Object, patch: Object) -> None:
    """Strategic-merge `patch` into `into`, for maps only (lists need per-field merge keys)."""
    for key, value in patch.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        elif isinstance(value, list):
            raise NotImplementedError(f"strategic merge of the list {key!r}: use a JSON patch")
        else:
            into[key] = value


def renamed_image(reference: str, image: Object) -> str:
    """Return `reference` with an `images` entry's new name, tag or digest, if it names it."""
    name, _, digest = reference.partition("@")
    tag = ""
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    if name != image["name"]:
        return reference
    name = image.get("newName", name)
    if "digest" in image:
        return f"{name}@{image['digest']}"
    if "newTag" in image:
        return f"{name}:{image['newTag']}"
    return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


# --- Reading rendered objects ----------------------------------------------------------------


def identity(obj: Object) -> tuple[str, str, str]:
    """Return what names an object in a cluster: kind, namespace, name."""
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def of_kind(objects: list[Object], kind: str) -> list[Object]:
    """Return the objects of `kind`."""
    return [obj for obj in objects if obj["kind"] == kind]


def named(objects: list[Object], kind: str, name: str) -> Object:
    """Return the one object of `kind` called `name`."""
    found = [obj for obj in of_kind(objects, kind) if obj["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} objects named {name!r}"
    return found[0]


def pod_spec(workload: Object) -> Object:
    """Return the pod spec of a Deployment or Job."""
    spec: Object = workload["spec"]["template"]["spec"]
    return spec


def containers(objects: list[Object]) -> Iterator[Object]:
    """Yield every container (and init container) of every workload."""
    for workload in objects:
        if workload["kind"] in WORKLOADS:
            spec = pod_spec(workload)
            yield from spec.get("initContainers", [])
            yield from spec["containers"]


def the_container(workload: Object) -> Object:
    """Return the workload's one container: each runs the image once."""
    (container,) = pod_spec(workload)["containers"]
    return container


def secret_example() -> Object:
    """Return the example Secret (deploy/k8s/secret.example.yaml)."""
    (secret,) = load_file(SECRET_EXAMPLE)
    return secret


def environment(objects: list[Object], container: Object) -> dict[str, str]:
    """Return the environment the container gets (Secret values from the example)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        config = named(objects, "ConfigMap", source["configMapRef"]["name"])
        env.update(config["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            reference = item["valueFrom"]["secretKeyRef"]
            secret = secret_example()
            assert reference["name"] == secret["metadata"]["name"]
            env[item["name"]] = secret["stringData"][reference["key"]]
    return env


def selects(selector: dict[str, str], workload: Object) -> bool:
    """Whether a label selector picks the workload's pods."""
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(key) == value for key, value in selector.items())


def deployment_of_mode(objects: list[Object], interface: str) -> Object:
    """Return the Deployment that serves `interface` ("wsgi" or "asgi")."""
    found = [
        deployment
        for deployment in of_kind(objects, "Deployment")
        if interface_of_mode(environment(objects, the_container(deployment))["SERVE_MODE"])
        == interface
    ]
    assert len(found) == 1, f"{len(found)} Deployments serve {interface}"
    return found[0]


def ingress_routes(objects: list[Object]) -> list[tuple[Object, Object, Object]]:
    """Return (Ingress, path entry, Deployment behind it) for every Ingress path."""
    routes = []
    for ingress in of_kind(objects, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                service = named(objects, "Service", path["backend"]["service"]["name"])
                port_names = {port["name"] for port in service["spec"]["ports"]}
                assert path["backend"]["service"]["port"]["name"] in port_names
                behind = [
                    deployment
                    for deployment in of_kind(objects, "Deployment")
                    if selects(service["spec"]["selector"], deployment)
                ]
                assert len(behind) == 1, f"Service {service['metadata']['name']} selects {behind}"
                routes.append((ingress, path, behind[0]))
    return routes


def seconds(duration: str) -> int:
    """Return an nginx duration without unit or in s/m/h (deploy/nginx.py's format) in seconds."""
    match = re.fullmatch(r"([0-9]+)(s|m|h)?", duration)
    assert match is not None, duration
    return int(match[1]) * {None: 1, "s": 1, "m": 60, "h": 3600}[match[2]]


# --- The sources of truth ---------------------------------------------------------------------


def dockerfile_stage(name: str) -> list[tuple[str, str]]:
    """Return the instructions (keyword, arguments) of the Dockerfile stage `name`."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            logical.append(pending.strip())
            pending = ""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for instruction in logical:
        keyword, _, arguments = instruction.partition(" ")
        if keyword.upper() == "FROM":
            current = []
            stages[arguments.split()[-1]] = current
        current.append((keyword.upper(), arguments))
    return stages[name]


def image_user() -> tuple[int, int]:
    """Return the app image's USER as (uid, gid)."""
    users = [arguments for keyword, arguments in dockerfile_stage(APP_STAGE) if keyword == "USER"]
    uid, gid = users[-1].split(":")
    return int(uid), int(gid)


def image_environment() -> dict[str, str]:
    """Return the ENV the app image sets."""
    env: dict[str, str] = {}
    for keyword, arguments in dockerfile_stage(APP_STAGE):
        if keyword == "ENV":
            for token in shlex.split(arguments):
                name, _, value = token.partition("=")
                env[name] = value
    return env


def variables_read() -> set[str]:
    """Return the variables settings.py, the gunicorn configs and the entry point read."""
    names = set()
    for path in (SETTINGS, *GUNICORN_CONFIGS):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and node.args:
                function = ast.unparse(node.func)
                reader = function in {"os.environ.get", "os.getenv"} or function.startswith("env_")
                argument = node.args[0]
            elif isinstance(node, ast.Subscript):
                reader = ast.unparse(node.value) == "os.environ"
                argument = node.slice
            else:
                continue
            if reader and isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                names.add(argument.value)
    names |= set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", ENTRYPOINT.read_text(encoding="utf-8")))
    return names


def gunicorn_settings(mode: str, env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Return what `gunicorn --print-config` resolves for `mode` in the pod's environment."""
    cleared: dict[str, str | None] = dict.fromkeys(INHERITED_SETTINGS)
    done = subprocess.run(
        [gunicorn_executable(), "--print-config", "--config", str(mode_config(mode))],
        cwd=REPO,
        env=merged_environment({**cleared, **env, "DJANGO_VAR_DIR": str(tmp_path)}),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    settings = {}
    for line in done.stdout.splitlines():
        name, sep, value = line.partition(" = ")
        if sep:
            settings[name.strip()] = value.strip()
    return settings


# --- The manifests are Kubernetes objects ----------------------------------------------------


@pytest.fixture(params=KUSTOMIZATIONS, ids=lambda path: str(path.relative_to(K8S)))
def kustomization(request: pytest.FixtureRequest) -> Path:
    """Each kustomization directory: the base and every overlay."""
    path: Path = request.param
    return path


@pytest.fixture
def objects(kustomization: Path) -> list[Object]:
    """The objects the kustomization renders."""
    return render(kustomization)


def test_there_is_a_base_and_a_production_overlay() -> None:
    assert K8S / "base" in KUSTOMIZATIONS
    assert K8S / "overlays" / "production" in KUSTOMIZATIONS


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_object_validates_against_the_kubernetes_schemas(
    objects: list[Object], version: str
) -> None:
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{identity(obj)} on Kubernetes {version}: {error.message}")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_secret_example_validates_and_is_plainly_fake(version: str) -> None:
    secret = secret_example()
    kubernetes_validate.validate(secret, version, strict=True)
    assert all("fake" in value for value in secret["stringData"].values())


def test_every_manifest_file_is_rendered_by_a_kustomization() -> None:
    # A file no kustomization lists would escape validation and never reach a cluster.
    reached = {SECRET_EXAMPLE, *(directory / "kustomization.yaml" for directory in KUSTOMIZATIONS)}
    for directory in KUSTOMIZATIONS:
        kustomization = load_file(directory / "kustomization.yaml")[0]
        entries = [*kustomization.get("resources", []), *kustomization.get("patches", [])]
        for entry in entries:
            path = (directory / (entry["path"] if isinstance(entry, dict) else entry)).resolve()
            if path.is_file():
                reached.add(path)
    assert set(K8S.rglob("*.yaml")) == reached


def test_the_renderer_builds_what_kubectl_kustomize_builds(kustomization: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the renderer is not compared with kustomize")
    done = subprocess.run(
        [kubectl, "kustomize", str(kustomization)],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    theirs = {identity(obj): obj for obj in load_documents(done.stdout)}
    ours = {identity(obj): obj for obj in render(kustomization)}
    assert ours == theirs


def test_every_object_carries_the_recommended_labels(objects: list[Object]) -> None:
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        assert [name for name in RECOMMENDED_LABELS if name not in labels] == [], identity(obj)
        if obj["kind"] in WORKLOADS:
            template_labels = obj["spec"]["template"]["metadata"]["labels"]
            assert set(labels.items()) <= set(template_labels.items()), identity(obj)


# --- The servers: one image, one Deployment per interface --------------------------------------


def test_one_deployment_per_interface_from_the_one_image(objects: list[Object]) -> None:
    deployments = of_kind(objects, "Deployment")
    modes = [environment(objects, the_container(d))["SERVE_MODE"] for d in deployments]
    assert all(mode in MODES and mode_config(mode).is_file() for mode in modes)
    assert sorted(interface_of_mode(mode) for mode in modes) == ["asgi", "wsgi"]
    assert len({container["image"] for container in containers(objects)}) == 1
    for deployment in deployments:
        interface = interface_of_mode(environment(objects, the_container(deployment))["SERVE_MODE"])
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == interface


def test_every_variable_the_pods_get_is_one_the_code_reads(objects: list[Object]) -> None:
    read = variables_read()
    for container in containers(objects):
        assert sorted(set(environment(objects, container)) - read) == [], container["name"]


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_the_container_port_is_where_the_mode_binds_in_the_pod(
    objects: list[Object], interface: str, tmp_path: Path
) -> None:
    deployment = deployment_of_mode(objects, interface)
    container = the_container(deployment)
    env = environment(objects, container)
    (port,) = container["ports"]
    in_pod = gunicorn_settings(env["SERVE_MODE"], env, tmp_path)["bind"]
    assert in_pod == f"['0.0.0.0:{port['containerPort']}']"
    # And the port is the mode's own: the one it binds without BIND, as compose and nginx use.
    default = gunicorn_settings(env["SERVE_MODE"], {}, tmp_path)["bind"]
    assert default == f"['127.0.0.1:{port['containerPort']}']"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == port["name"]


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_termination_grace_outlasts_the_prestop_sleep_and_gunicorns_graceful_timeout(
    objects: list[Object], interface: str, tmp_path: Path
) -> None:
    deployment = deployment_of_mode(objects, interface)
    container = the_container(deployment)
    env = environment(objects, container)
    graceful = int(gunicorn_settings(env["SERVE_MODE"], env, tmp_path)["graceful_timeout"])
    program, pause = container["lifecycle"]["preStop"]["exec"]["command"]
    assert program == "sleep"
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] > int(pause) + graceful


def test_the_prestop_program_is_in_the_image() -> None:
    # `sleep` comes with Debian's coreutils (an Essential package, in every slim image); an
    # Alpine or distroless base would need the preStop changed.
    (base,) = [args for keyword, args in dockerfile_stage(APP_STAGE) if keyword == "FROM"]
    assert re.match(r"python:\S+-slim-(bookworm|trixie)\b", base), base


def test_pods_run_as_the_images_user_with_nothing_more(objects: list[Object]) -> None:
    uid, gid = image_user()
    for workload in objects:
        if workload["kind"] not in WORKLOADS:
            continue
        spec = pod_spec(workload)
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            effective = {**spec["securityContext"], **container.get("securityContext", {})}
            assert effective["runAsNonRoot"] is True
            assert (effective["runAsUser"], effective["runAsGroup"]) == (uid, gid)
            assert effective["seccompProfile"] == {"type": "RuntimeDefault"}
            assert effective["allowPrivilegeEscalation"] is False
            assert effective["readOnlyRootFilesystem"] is True
            assert effective["capabilities"] == {"drop": ["ALL"]}


def test_the_read_only_pods_can_write_their_home_and_temporary_files(
    objects: list[Object],
) -> None:
    home = image_environment()["HOME"]
    for workload in objects:
        if workload["kind"] not in WORKLOADS:
            continue
        volumes = {volume["name"]: volume for volume in pod_spec(workload)["volumes"]}
        for container in pod_spec(workload)["containers"]:
            mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
            for path in {home, "/tmp"}:
                assert "emptyDir" in volumes[mounts[path]["name"]], (identity(workload), path)
                assert not mounts[path].get("readOnly", False)


def test_every_container_requests_what_the_autoscaler_measures(objects: list[Object]) -> None:
    for container in containers(objects):
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert "memory" in container["resources"]["limits"]


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_each_deployment_has_its_service_disruption_budget_and_autoscaler(
    objects: list[Object], interface: str
) -> None:
    deployment = deployment_of_mode(objects, interface)
    name = deployment["metadata"]["name"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    # The autoscaler owns the replica count; a count here would reset it on every apply.
    assert "replicas" not in deployment["spec"]
    services = [
        s for s in of_kind(objects, "Service") if selects(s["spec"]["selector"], deployment)
    ]
    assert len(services) == 1
    budgets = [
        budget
        for budget in of_kind(objects, "PodDisruptionBudget")
        if budget["spec"]["selector"]["matchLabels"] == selector
    ]
    assert len(budgets) == 1
    scalers = [
        scaler
        for scaler in of_kind(objects, "HorizontalPodAutoscaler")
        if scaler["spec"]["scaleTargetRef"]["name"] == name
    ]
    assert len(scalers) == 1
    (scaler,) = scalers
    assert scaler["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    # Room for the budget to let one pod go while another still serves.
    assert scaler["spec"]["minReplicas"] > budgets[0]["spec"]["maxUnavailable"]
    assert [m["resource"]["name"] for m in scaler["spec"]["metrics"]] == ["cpu"]


# --- The Ingress: nginx's hybrid entry -------------------------------------------------------


def test_the_asgi_paths_are_the_hybrid_entrys_default_prefixes(objects: list[Object]) -> None:
    routes = ingress_routes(objects)
    asgi = deployment_of_mode(objects, "asgi")
    wsgi = deployment_of_mode(objects, "wsgi")
    to_asgi = sorted(path["path"] for _, path, behind in routes if behind is asgi)
    to_wsgi = sorted(path["path"] for _, path, behind in routes if behind is wsgi)
    assert to_asgi == sorted(nginx.asgi_prefixes({}))
    assert to_wsgi == ["/"]
    assert {path["pathType"] for _, path, _ in routes} == {"Prefix"}


def test_the_ingress_annotations_are_the_hybrid_entrys_proxy_settings(
    objects: list[Object],
) -> None:
    asgi = deployment_of_mode(objects, "asgi")
    timeout = str(seconds(nginx.TUNING_DEFAULTS["NGINX_PROXY_READ_TIMEOUT"]))
    for ingress, _, behind in ingress_routes(objects):
        annotations = ingress["metadata"]["annotations"]
        assert ingress["spec"]["ingressClassName"] == "nginx"
        # Buffered for WSGI (a slow client must not hold a thread), not for ASGI (streams).
        buffering = "off" if behind is asgi else "on"
        assert annotations[INGRESS_NGINX + "proxy-buffering"] == buffering
        assert annotations[INGRESS_NGINX + "proxy-read-timeout"] == timeout
        assert annotations[INGRESS_NGINX + "proxy-send-timeout"] == timeout
        body_size = nginx.TUNING_DEFAULTS["NGINX_CLIENT_MAX_BODY_SIZE"]
        assert annotations[INGRESS_NGINX + "proxy-body-size"] == body_size


def test_every_ingress_serves_the_same_allowed_hosts_with_the_same_tls(
    objects: list[Object],
) -> None:
    # One site: an Ingress left without the host (or its TLS) would answer its paths for any
    # host name, or over plain HTTP.
    ingresses = of_kind(objects, "Ingress")
    hosts = {
        tuple(sorted(rule.get("host", "") for rule in ingress["spec"]["rules"]))
        for ingress in ingresses
    }
    tls = {
        tuple(sorted(host for entry in ingress["spec"].get("tls", []) for host in entry["hosts"]))
        for ingress in ingresses
    }
    assert len(hosts) == 1
    assert len(tls) == 1
    (served,) = hosts
    (secured,) = tls
    assert set(secured) <= set(served)
    for container in containers(objects):
        env = environment(objects, container)
        allowed = env["DJANGO_ALLOWED_HOSTS"].split(",")
        origins = env["DJANGO_CSRF_TRUSTED_ORIGINS"].split(",")
        for host in filter(None, served):
            assert host in allowed
            assert f"https://{host}" in origins


def test_only_the_ingress_controller_reaches_the_servers(objects: list[Object]) -> None:
    (policy,) = of_kind(objects, "NetworkPolicy")
    selector = policy["spec"]["podSelector"]
    (components,) = selector["matchExpressions"]
    covered = [
        d
        for d in of_kind(objects, "Deployment")
        if selects(selector["matchLabels"], d)
        and d["spec"]["template"]["metadata"]["labels"][components["key"]] in components["values"]
    ]
    assert len(covered) == len(of_kind(objects, "Deployment"))
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert [port["port"] for port in rule["ports"]] == ["http"]


# --- The migrate Job -------------------------------------------------------------------------


def test_the_migrate_job_runs_composes_migrate_command(objects: list[Object]) -> None:
    (job,) = of_kind(objects, "Job")
    (compose,) = load_file(COMPOSE_FILE)
    container = the_container(job)
    assert "command" not in container  # the image's entry point stays
    assert container["args"] == compose["services"]["migrate"]["command"]
    assert pod_spec(job)["restartPolicy"] == "Never"


def test_every_secret_key_the_pods_read_is_in_the_example(objects: list[Object]) -> None:
    keys = set(secret_example()["stringData"])
    for container in containers(objects):
        for item in container.get("env", []):
            if "valueFrom" in item:
                assert item["valueFrom"]["secretKeyRef"]["key"] in keys
                assert "optional" not in item["valueFrom"]["secretKeyRef"]


# --- The pods' environments really run --------------------------------------------------------


def local_environment(env: dict[str, str], database: Path) -> dict[str, str | None]:
    """Return a pod's environment for this machine: a SQLite file, the venv on PATH.

    There is no PostgreSQL here; the rest is the pod's, production settings included.
    """
    cleared: dict[str, str | None] = dict.fromkeys(INHERITED_SETTINGS)
    venv_bin = str(Path(sys.executable).parent)
    return {
        **cleared,
        **env,
        "DATABASE_URL": f"sqlite:///{database}",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_VAR_DIR": str(database.parent),
        "PATH": f"{venv_bin}:{merged_environment(None).get('PATH', '')}",
    }


def probe(port: int, path: str, container_port: int) -> int:
    """Return the status of GET `path` as a kubelet sends it: plain HTTP, the pod IP as Host."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": f"{POD_ADDRESS}:{container_port}"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.mark.serving
@pytest.mark.slow
def test_the_job_migrates_and_each_server_answers_its_probes_in_the_pods_environment(
    tmp_path: Path,
) -> None:
    objects = render(K8S / "overlays" / "production")
    database = tmp_path / "db.sqlite3"
    (job,) = of_kind(objects, "Job")
    job_env = environment(objects, the_container(job))
    done = subprocess.run(
        [str(ENTRYPOINT), *the_container(job)["args"]],
        env=merged_environment(local_environment(job_env, database)),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT count(*) FROM django_migrations").fetchone()[0] > 0
    for interface in ("wsgi", "asgi"):
        container = the_container(deployment_of_mode(objects, interface))
        env = local_environment(environment(objects, container), database)
        container_port = container["ports"][0]["containerPort"]
        startup = container["startupProbe"]["httpGet"]["path"]
        workdir = tmp_path / interface
        with start(
            [str(ENTRYPOINT)],
            env=env,
            bind_with="BIND",
            workdir=workdir,
            timeout=START_TIMEOUT,
            health_path=startup,
        ) as server:
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                path = container[kind]["httpGet"]["path"]
                status = probe(server.port, path, container_port)
                assert status == 200, f"{interface} {kind} {path}: {status}\n{server.tail()}"
