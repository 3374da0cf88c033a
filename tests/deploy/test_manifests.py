"""The Kubernetes manifests (deploy/k8s): every overlay rendered with `kubectl kustomize`,
every object validated against the Kubernetes schemas, and the render read for what
docs/deploy.md promises: the variables of docs/configuration.md wired, probes on the
real endpoints, a termination grace that covers the drain, KEDA and Prometheus pointed
at the real endpoints with the real secrets.

Nothing here runs on a cluster: what a kubelet, KEDA or the Prometheus Operator would do
with these objects is not exercised (docs/deploy.md, "What was verified").
"""

from __future__ import annotations

import copy
import ipaddress
import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from django.urls import resolve

from tests.deploy.support import (
    K8S_DIR,
    OVERLAYS,
    RELEASE_IMAGE,
    containers,
    documented_variables,
    env_file,
    env_value,
    find,
    is_wedsync,
    kustomize,
    pod_spec,
    same_value,
)
from tests.deploy.support import container as container_named

# The Kubernetes versions the manifests are validated against: the oldest we support
# (matchLabelKeys of topology spread is on by default from 1.27; 1.30 is the oldest
# release still patched by most providers) and a current one. Strict: an unknown field
# (a typo) is an error.
KUBERNETES_VERSIONS = ("1.30.0", "1.33.0")

SECRETS_EXAMPLE = K8S_DIR / "secrets.env.example"
SECRET_NAME = "wedsync-secrets"

# Variables of docs/configuration.md that no manifest sets, and why.
NOT_APPLICABLE = {
    "CELERY_BROKER_DIR": "the embedded default's filesystem broker; on Kubernetes the broker "
    "is REDIS_URL (the Secret)",
    "SCALING_COMMAND_TEMPLATE": "the command actuator; here KEDA applies the decisions "
    "(SCALING_ACTUATOR=log) and the image has no kubectl",
    "SCALING_COMMAND_TIMEOUT": "the command actuator's timeout; see SCALING_COMMAND_TEMPLATE",
}
# Variables the manifests set that docs/configuration.md does not name, and why.
HELPERS = {
    "POD_IP": "the pod's IP (Downward API), expanded into ALLOWED_HOSTS by the kubelet; the "
    "application never reads it",
}
# ConfigMap values that differ from the documented default, and why.
DELIBERATE = {
    "DJANGO_READ_DOT_ENV_FILE": "the image ships no .env: the environment is the only source",
    "DJANGO_SECURE_SSL_REDIRECT": "the ingress redirects to HTTPS; probes, Prometheus and "
    "KEDA speak plain HTTP inside the cluster",
    "DJANGO_SECURE_PROXY_SSL_HEADER": "behind ingress-nginx, which sets X-Forwarded-Proto",
    "FORWARDED_ALLOW_IPS": "the ingress controller's pod network",
    "WEB_CONCURRENCY": "declared: the most web pods x SERVER_WORKERS",
    "CSRF_TRUSTED_ORIGINS": "the public origin, https://<the Ingress host>",
    "METRICS_PEERS": "each pod is a host: the snapshot adds up every web and worker pod's "
    "/metrics through the headless Services",
}

# Custom resources kubernetes-validate has no schema for. Their operators' CRD schemas are
# not vendored here: each kind is held to the fields its operator documents (the schemas
# below, ours, additionalProperties false so a misspelt field fails) and to what it must
# refer to in the render (test_keda__..., test_servicemonitor__...).
_STRING = {"type": "string"}
_INTEGER = {"type": "integer", "minimum": 0}
_NAME_REF = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {"name": _STRING, "kind": {"enum": ["TriggerAuthentication"]}},
}
_SECRET_KEY = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "key"],
    "properties": {"name": _STRING, "key": _STRING, "optional": {"type": "boolean"}},
}


def _resource(spec: dict) -> dict:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"metadata": {"type": "object", "required": ["name"]}, "spec": spec},
    }


SCALED_OBJECT = _resource(
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["scaleTargetRef", "triggers"],
        "properties": {
            "scaleTargetRef": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {
                    "apiVersion": _STRING,
                    "kind": _STRING,
                    "name": _STRING,
                    "envSourceContainerName": _STRING,
                },
            },
            "pollingInterval": _INTEGER,
            "cooldownPeriod": _INTEGER,
            "initialCooldownPeriod": _INTEGER,
            "minReplicaCount": _INTEGER,
            "maxReplicaCount": _INTEGER,
            "advanced": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "restoreToOriginalReplicaCount": {"type": "boolean"},
                    "horizontalPodAutoscalerConfig": {
                        "type": "object",
                        "additionalProperties": False,
                        # behavior is the HPA's own: validated as one, below
                        "properties": {"name": _STRING, "behavior": {"type": "object"}},
                    },
                },
            },
            "triggers": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["type", "metadata"],
                    "properties": {
                        "type": _STRING,
                        "name": _STRING,
                        "metricType": {"enum": ["AverageValue", "Value"]},
                        "metadata": {"type": "object", "additionalProperties": _STRING},
                        "authenticationRef": _NAME_REF,
                        "useCachedMetrics": {"type": "boolean"},
                    },
                },
            },
        },
    }
)
TRIGGER_AUTHENTICATION = _resource(
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["secretTargetRef"],
        "properties": {
            "secretTargetRef": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["parameter", "name", "key"],
                    "properties": {"parameter": _STRING, "name": _STRING, "key": _STRING},
                },
            }
        },
    }
)
SERVICE_MONITOR = _resource(
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["selector", "endpoints"],
        "properties": {
            "selector": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"matchLabels": {"type": "object", "additionalProperties": _STRING}},
            },
            "jobLabel": _STRING,
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["port", "path"],
                    "properties": {
                        "port": _STRING,
                        "path": _STRING,
                        "scheme": {"enum": ["http", "https"]},
                        "interval": {"type": "string", "pattern": r"^\d+s$"},
                        "scrapeTimeout": {"type": "string", "pattern": r"^\d+s$"},
                        "authorization": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["credentials"],
                            "properties": {
                                "type": {"enum": ["Bearer"]},
                                "credentials": _SECRET_KEY,
                            },
                        },
                    },
                },
            },
        },
    }
)
CUSTOM_RESOURCES = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TRIGGER_AUTHENTICATION,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
}


# --- the render -------------------------------------------------------------------------


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return request.param


_RENDERED: dict[str, list[dict]] = {}


@pytest.fixture
def rendered(overlay: str) -> list[dict]:
    """The overlay's objects (rendered once per module and overlay; each test gets a copy)."""
    if overlay not in _RENDERED:
        _RENDERED[overlay] = kustomize(K8S_DIR / "overlays" / overlay)
    return copy.deepcopy(_RENDERED[overlay])


def workloads(objects: list[dict]) -> list[dict]:
    return [o for o in objects if pod_spec(o) is not None]


def wedsync_containers(objects: list[dict]) -> list[tuple[dict, dict]]:
    return [(o, c) for o in workloads(objects) for c in containers(o) if is_wedsync(c)]


def config(objects: list[dict]) -> dict[str, str]:
    maps = [o for o in objects if o["kind"] == "ConfigMap"]
    assert len(maps) == 1
    return maps[0]["data"]


def secret_keys() -> set[str]:
    """The keys of the Secret's example: its lines, and the optional ones commented out
    (``# EMAIL_URL=...``)."""
    optional = re.findall(r"^# ([A-Z][A-Z0-9_]*)=", SECRETS_EXAMPLE.read_text(), re.MULTILINE)
    return set(env_file(SECRETS_EXAMPLE)) | set(optional)


def scaled_objects(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] == "ScaledObject"]


# --- schemas ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_overlay__every_object_is_valid_for_kubernetes(rendered, version):
    validated = 0
    for obj in rendered:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_RESOURCES:
            continue  # no schema in kubernetes-validate: test_custom_resources__...
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{name}: no Kubernetes schema, and not a custom resource checked here")
        validated += 1
    assert validated >= 15


def test_validator__rejects_a_misspelt_field():
    # The check above is worth something only if strict validation catches a typo.
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "x"},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "x", "image": "x", "comand": ["true"]},
        ]}}},
    }  # fmt: skip

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES_VERSIONS[-1], strict=True)


def test_custom_resources__hold_to_their_operators_fields(rendered):
    for obj in rendered:
        schema = CUSTOM_RESOURCES.get((obj["apiVersion"], obj["kind"]))
        if schema is not None:
            jsonschema.validate(obj, schema)


def test_custom_resource_check__rejects_a_misspelt_field():
    scaled = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "x"},
        "spec": {"scaleTargetRef": {"name": "x"}, "maxReplicaCont": 3, "triggers": [
            {"type": "metrics-api", "metadata": {"url": "http://x/"}},
        ]},
    }  # fmt: skip

    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, SCALED_OBJECT)


# --- configuration: docs/configuration.md <-> ConfigMap, Secret, env ------------------------


def test_configuration__every_documented_variable_is_wired_or_not_applicable(rendered):
    documented = set(documented_variables())
    set_in_env = {e["name"] for _, c in wedsync_containers(rendered) for e in c.get("env", [])}
    wired = set(config(rendered)) | secret_keys() | set_in_env

    missing = documented - wired - set(NOT_APPLICABLE)
    assert not missing, f"documented but not wired (nor listed as not applicable): {missing}"
    assert set(NOT_APPLICABLE) <= documented, "NOT_APPLICABLE names a variable no longer documented"
    assert not set(NOT_APPLICABLE) & wired, "a variable listed as not applicable is set"


def test_configuration__every_variable_set_is_documented(rendered):
    documented = set(documented_variables())
    set_in_env = {e["name"] for _, c in wedsync_containers(rendered) for e in c.get("env", [])}
    names = set(config(rendered)) | secret_keys() | set_in_env

    assert names - set(HELPERS) <= documented, sorted(names - set(HELPERS) - documented)


def test_configuration__defaults_kept_unless_a_reason_is_given(rendered):
    documented = documented_variables()
    for name, value in config(rendered).items():
        default = documented[name].default
        if default is None or name in DELIBERATE:
            continue
        assert same_value(value, default), f"{name}={value!r}, documented default {default!r}"


def test_secrets__only_in_the_secret_and_every_container_reads_both(rendered):
    configmap = next(o for o in rendered if o["kind"] == "ConfigMap")
    must_be_secret = {
        "DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "METRICS_TOKEN",
        "SCALING_API_TOKEN", "EMAIL_URL", "SENTRY_DSN",
    }  # fmt: skip

    assert must_be_secret <= secret_keys()
    assert not secret_keys() & set(configmap["data"])
    for obj, c in wedsync_containers(rendered):
        refs = c.get("envFrom", [])
        assert {"configMapRef": {"name": configmap["metadata"]["name"]}} in refs, c["name"]
        assert {"secretRef": {"name": SECRET_NAME}} in refs, (obj["metadata"]["name"], c["name"])
        # no secret is written into a manifest
        assert not {e["name"] for e in c.get("env", [])} & secret_keys(), c["name"]


def test_database_pool__is_larger_than_the_realtime_threads(rendered):
    values = config(rendered)
    assert int(values["DATABASE_POOL_MAX_SIZE"]) > int(values["REALTIME_DB_THREADS"])


# --- web: probes, drain, service, ingress ---------------------------------------------------


def _probe_paths(c: dict) -> dict[str, str]:
    return {
        kind: c[kind]["httpGet"]["path"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
        if kind in c
    }


def test_probes__point_at_the_real_endpoints(rendered):
    web = container_named(find(rendered, "Deployment", "wedsync-web"), "web")
    metrics = container_named(find(rendered, "Deployment", "wedsync-worker"), "metrics")

    # readiness on /readyz, liveness and start-up on /healthz (docs/operations.md, Probes)
    paths = _probe_paths(web)
    assert resolve(paths["readinessProbe"]).url_name == "readyz"
    assert resolve(paths["livenessProbe"]).url_name == "healthz"
    assert resolve(paths["startupProbe"]).url_name == "healthz"
    for path in _probe_paths(metrics).values():
        assert resolve(path).url_name == "healthz"
    for c in (web, metrics):
        ports = {p["name"] for p in c["ports"]}
        for kind in _probe_paths(c):
            assert c[kind]["httpGet"]["port"] in ports, (c["name"], kind)
    # the thresholds docs/operations.md gives for Kubernetes
    assert (web["readinessProbe"]["periodSeconds"], web["readinessProbe"]["timeoutSeconds"],
            web["readinessProbe"]["failureThreshold"]) == (5, 3, 2)  # fmt: skip
    assert web["livenessProbe"]["failureThreshold"] == 6
    assert web["startupProbe"]["periodSeconds"] * web["startupProbe"]["failureThreshold"] >= 60


def test_web__termination_grace_covers_the_pre_stop_and_the_drain(rendered):
    deployment = find(rendered, "Deployment", "wedsync-web")
    web = container_named(deployment, "web")
    command = web["lifecycle"]["preStop"]["exec"]["command"]
    grace = float(config(rendered)["REALTIME_SHUTDOWN_GRACE"])

    assert command[0] == "sleep"
    pre_stop = float(command[1])
    # the drain: the grace for the frames in flight, as long again for the clients to go
    # (docs/operations.md), and a margin before SIGKILL
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] >= pre_stop + 2 * grace + 5


def test_web__one_server_process_per_pod_on_the_service_port(rendered):
    deployment = find(rendered, "Deployment", "wedsync-web")
    service = find(rendered, "Service", "wedsync-web")
    web = container_named(deployment, "web")

    assert web["command"][:3] == ["python", "-m", "wedsync.serve"]
    assert config(rendered)["SERVER_WORKERS"] == "1"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in web["ports"]}
    # WebSockets: no session affinity, a client resumes on any pod with `since`
    assert service["spec"].get("sessionAffinity", "None") == "None"


def test_ingress__routes_to_the_web_service_with_websocket_timeouts_above_75s(rendered):
    ingress = find(rendered, "Ingress", "wedsync")
    service = find(rendered, "Service", "wedsync-web")
    annotations = ingress["metadata"]["annotations"]

    for name in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{name}"]) > 75, name
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "wedsync-web"
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert ingress["spec"]["tls"][0]["hosts"] == [rule["host"]]


def test_allowed_hosts__the_public_host_and_the_pods_own_ip(rendered):
    host = find(rendered, "Ingress", "wedsync")["spec"]["rules"][0]["host"]
    for deployment, name in (("wedsync-web", "web"), ("wedsync-worker", "metrics")):
        c = container_named(find(rendered, "Deployment", deployment), name)
        env = c["env"]
        names = [e["name"] for e in env]
        pod_ip = env[names.index("POD_IP")]
        hosts = env_value(c, "ALLOWED_HOSTS").split(",")

        assert hosts[0] == host and hosts[-1] == "$(POD_IP)"
        # the kubelet expands $(POD_IP) only from a variable defined before it
        assert names.index("POD_IP") < names.index("ALLOWED_HOSTS")
        assert pod_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert config(rendered)["CSRF_TRUSTED_ORIGINS"] == f"https://{host}"


def test_public_host__is_written_once_and_followed_everywhere(overlay, tmp_path):
    # given: a copy of the manifests whose overlay names another host in its Ingress
    shutil.copytree(K8S_DIR, tmp_path / "k8s")
    ingress = tmp_path / "k8s" / "overlays" / overlay / "ingress.yaml"
    ingress.write_text(ingress.read_text().replace("wedsync.example.com", "live.example.org"))

    # when
    objects = kustomize(tmp_path / "k8s" / "overlays" / overlay)

    # then
    web = container_named(find(objects, "Deployment", "wedsync-web"), "web")
    metrics = container_named(find(objects, "Deployment", "wedsync-worker"), "metrics")
    assert env_value(web, "ALLOWED_HOSTS").startswith("live.example.org,")
    assert env_value(metrics, "ALLOWED_HOSTS").startswith("live.example.org,")
    assert config(objects)["CSRF_TRUSTED_ORIGINS"] == "https://live.example.org"
    assert find(objects, "Ingress", "wedsync")["spec"]["tls"][0]["hosts"] == ["live.example.org"]
    assert "wedsync.example.com" not in yaml.safe_dump_all(objects)


def test_forwarded_headers__believed_from_a_network_not_from_everyone(rendered):
    value = config(rendered)["FORWARDED_ALLOW_IPS"]
    networks = [ipaddress.ip_network(part.strip()) for part in value.split(",")]

    assert "*" not in value
    assert not all(n.is_loopback for n in networks), "the ingress controller is not loopback"


# --- worker, beat, migrations ---------------------------------------------------------------


def test_worker__its_metrics_are_served_from_the_same_pid_namespace_and_folder(rendered):
    deployment = find(rendered, "Deployment", "wedsync-worker")
    worker = container_named(deployment, "worker")
    metrics = container_named(deployment, "metrics")
    service = find(rendered, "Service", "wedsync-worker-metrics")
    folder = Path(config(rendered)["PROMETHEUS_MULTIPROC_DIR"])

    assert worker["command"][:4] == ["celery", "-A", "wedsync", "worker"]
    assert metrics["command"][:3] == ["python", "-m", "wedsync.serve"]
    assert pod_spec(deployment)["shareProcessNamespace"] is True
    mounts = [{m["name"]: m["mountPath"] for m in c["volumeMounts"]} for c in (worker, metrics)]
    shared = {name for name, path in mounts[0].items() if mounts[1].get(name) == path}
    assert any(folder.is_relative_to(mounts[0][name]) for name in shared)
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in metrics["ports"]}


def test_beat__exactly_one_replica_replaced_never_doubled(rendered):
    beat = find(rendered, "Deployment", "wedsync-beat")

    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    assert container_named(beat, "beat")["command"][:4] == ["celery", "-A", "wedsync", "beat"]
    for scaled in scaled_objects(rendered):
        assert scaled["spec"]["scaleTargetRef"]["name"] != "wedsync-beat"
    assert not [o for o in rendered if o["kind"] == "HorizontalPodAutoscaler"]


def test_migrations__a_job_runs_them_and_every_process_waits_for_them(rendered):
    job = find(rendered, "Job", "wedsync-migrate")

    assert container_named(job, "migrate")["command"] == [
        "python", "manage.py", "migrate", "--noinput",
    ]  # fmt: skip
    assert pod_spec(job)["restartPolicy"] == "Never"
    for name in ("wedsync-web", "wedsync-worker", "wedsync-beat"):
        deployment = find(rendered, "Deployment", name)
        (init,) = pod_spec(deployment)["initContainers"]
        assert "python manage.py migrate --check" in " ".join(init["command"]), name
        # its processes' metric files stay out of the folder the pod's /metrics reads
        main = pod_spec(deployment)["containers"][0]
        var = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}["/app/var"]
        assert var not in {m["name"] for m in init["volumeMounts"]}, name


def test_disruption_budgets__select_running_pods(rendered):
    for budget in (o for o in rendered if o["kind"] == "PodDisruptionBudget"):
        selector = budget["spec"]["selector"]["matchLabels"]
        selected = [
            o for o in workloads(rendered)
            if selector.items() <= o["spec"]["template"]["metadata"]["labels"].items()
        ]  # fmt: skip
        assert [o["kind"] for o in selected] == ["Deployment"], budget["metadata"]["name"]
        assert budget["spec"]["maxUnavailable"] == 1


# --- the pods' shape --------------------------------------------------------------------------


def test_pods__meet_the_restricted_pod_security_standard(rendered):
    namespace = next(o for o in rendered if o["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in workloads(rendered):
        pod = pod_spec(obj)["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0, obj["metadata"]["name"]
        assert pod["seccompProfile"]["type"] == "RuntimeDefault"
        for c in containers(obj):
            security = c["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, c["name"]
            assert security["capabilities"]["drop"] == ["ALL"], c["name"]
            assert security["readOnlyRootFilesystem"] is True, c["name"]


def test_images__every_wedsync_container_runs_the_release_image(rendered):
    pairs = wedsync_containers(rendered)

    assert len(pairs) >= 8  # web (+init), worker (+init, metrics), beat (+init), migrate
    for _, c in pairs:
        assert c["image"].startswith(f"{RELEASE_IMAGE}:"), c["image"]


def test_scrape_annotations__name_a_real_port_and_the_metrics_endpoint(rendered):
    annotated = [
        o for o in workloads(rendered)
        if o["spec"]["template"]["metadata"].get("annotations", {}).get("prometheus.io/scrape")
    ]  # fmt: skip

    assert {o["metadata"]["name"] for o in annotated} == {"wedsync-web", "wedsync-worker"}
    for obj in annotated:
        annotations = obj["spec"]["template"]["metadata"]["annotations"]
        ports = {str(p["containerPort"]) for c in containers(obj) for p in c.get("ports", [])}
        assert annotations["prometheus.io/port"] in ports
        assert resolve(annotations["prometheus.io/path"]).url_name == "metrics"


# --- production: KEDA, the Prometheus Operator, network policy ------------------------------


@pytest.fixture
def production() -> list[dict]:
    if "production" not in _RENDERED:
        _RENDERED["production"] = kustomize(K8S_DIR / "overlays" / "production")
    return copy.deepcopy(_RENDERED["production"])


def test_keda__scales_web_and_workers_from_the_desired_endpoint(production):
    values = config(production)
    service = find(production, "Service", "wedsync-web")
    web = container_named(find(production, "Deployment", "wedsync-web"), "web")
    bounds = {
        "wedsync-web": ("asgi", "SCALING_MIN_ASGI", "SCALING_MAX_ASGI"),
        "wedsync-worker": ("workers", "SCALING_MIN_WORKERS", "SCALING_MAX_WORKERS"),
    }
    scaled = {o["spec"]["scaleTargetRef"]["name"]: o for o in scaled_objects(production)}

    assert set(scaled) == set(bounds)
    for target, (field, low, high) in bounds.items():
        spec = scaled[target]["spec"]
        deployment = find(production, "Deployment", target)
        # the HPA owns the count: an apply must not reset it
        assert "replicas" not in deployment["spec"]
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (
            int(values[low]), int(values[high]),
        )  # fmt: skip
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "metrics-api" and trigger["metricType"] == "AverageValue"
        meta = trigger["metadata"]
        assert (meta["valueLocation"], meta["targetValue"], meta["authMode"]) == (
            field, "1", "bearer",
        )  # fmt: skip
        # the URL reaches the web Service inside the cluster, on a real endpoint, with a
        # Host the site accepts
        url = urlsplit(meta["url"])
        assert url.hostname == f"wedsync-web.{service['metadata']['namespace']}.svc.cluster.local"
        assert url.port == service["spec"]["ports"][0]["port"]
        assert resolve(url.path).url_name == "scaling-desired"
        assert url.hostname in env_value(web, "ALLOWED_HOSTS").split(",")
        assert url.scheme == "http" and values["DJANGO_SECURE_SSL_REDIRECT"] == "false"
        # its bearer token is SCALING_API_TOKEN of the Secret
        auth = find(production, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        (ref,) = auth["spec"]["secretTargetRef"]
        assert (ref["parameter"], ref["name"], ref["key"]) == (
            "token", SECRET_NAME, "SCALING_API_TOKEN",
        )  # fmt: skip
        # what KEDA makes of it is an HPA: its min/max and behavior must be valid as one
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": f"keda-hpa-{target}"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
                "minReplicas": spec["minReplicaCount"],
                "maxReplicas": spec["maxReplicaCount"],
                "behavior": spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
            },
        }
        kubernetes_validate.validate(hpa, KUBERNETES_VERSIONS[-1], strict=True)
    # decisions are applied by KEDA alone; one process per pod, declared for the most pods
    assert values["SCALING_ACTUATOR"] == "log"
    most_pods = scaled["wedsync-web"]["spec"]["maxReplicaCount"]
    assert int(values["WEB_CONCURRENCY"]) >= most_pods * int(values["SERVER_WORKERS"])


def test_servicemonitor__scrapes_every_metrics_port_with_the_token(production):
    (monitor,) = [o for o in production if o["kind"] == "ServiceMonitor"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [
        o for o in production
        if o["kind"] == "Service" and selector.items() <= o["metadata"]["labels"].items()
    ]  # fmt: skip
    ports = {p["name"] for s in services for p in s["spec"]["ports"]}

    endpoints = monitor["spec"]["endpoints"]
    assert {e["port"] for e in endpoints} == {"http", "metrics"} <= ports
    for endpoint in endpoints:
        assert resolve(endpoint["path"]).url_name == "metrics"
        credentials = endpoint["authorization"]["credentials"]
        assert (credentials["name"], credentials["key"]) == (SECRET_NAME, "METRICS_TOKEN")
    assert config(production)["METRICS_ALLOWED_NETWORKS"] == ""  # the token, not a network


def test_network_policy__web_pods_take_connections_from_named_namespaces_only(production):
    policy = find(production, "NetworkPolicy", "wedsync-web")
    web = find(production, "Deployment", "wedsync-web")

    pod_labels = web["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    (rule,) = policy["spec"]["ingress"]
    namespaces = {
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for peer in rule["from"]
    }
    assert namespaces == {"ingress-nginx", "monitoring", "keda"}
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]


def test_production__web_pods_spread_over_nodes_and_zones(production):
    spread = pod_spec(find(production, "Deployment", "wedsync-web"))["topologySpreadConstraints"]

    assert {(c["topologyKey"], c["whenUnsatisfiable"]) for c in spread} == {
        ("topology.kubernetes.io/zone", "ScheduleAnyway"),
        ("kubernetes.io/hostname", "DoNotSchedule"),
    }
