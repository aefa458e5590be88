"""The manifests under deploy/ are whole, consistent, least-privileged, and their commands
are ones the real `fleet` CLI accepts.

Nothing here talks to a cluster: the files are read as data, kustomize builds them when
kubectl is installed, and the containers' command lines are parsed (not run) by the CLI.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from typer.core import TyperGroup

from fleet_cli.main import app
from tests.deploy.manifests import (
    CLUSTER_SCOPED_KINDS,
    DEPLOY,
    KUSTOMIZATION,
    NOT_APPLIED,
    Manifest,
    applied,
    config_values,
    containers,
    documents,
    find,
    kustomization,
    kustomize_folders,
    listed_files,
    of_kind,
    pod_spec,
    with_examples,
    workloads,
    yaml_files,
)
from tests.deploy.rbac import AGENT_FOLDER, AGENT_SERVICE_ACCOUNT, agent_rbac_allows

CONTROL_PLANE_FOLDER = DEPLOY / "control-plane"
IMAGE = "ghcr.io/flyte-fleet/flyte-fleet"
GRPC_PORT = 50051
ENV_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

WORKLOADS = list(workloads())
WORKLOAD_IDS = [f"{folder.name}/{workload['metadata']['name']}" for folder, workload in WORKLOADS]


def relative(path: Path) -> str:
    return str(path.relative_to(DEPLOY))


def test_the_two_kustomizations_exist() -> None:
    assert [folder.name for folder in kustomize_folders()] == ["agent", "control-plane"]


@pytest.mark.parametrize("path", yaml_files(), ids=relative)
def test_every_document_has_api_version_kind_and_name(path: Path) -> None:
    manifests = documents(path)
    assert manifests, f"{relative(path)} is empty"
    for manifest in manifests:
        assert manifest.get("apiVersion") and manifest.get("kind"), relative(path)
        if path.name == KUSTOMIZATION:
            assert manifest["kind"] == "Kustomization"
        else:
            assert manifest.get("metadata", {}).get("name"), f"{relative(path)}: {manifest}"


@pytest.mark.parametrize("folder", kustomize_folders(), ids=lambda folder: folder.name)
def test_the_kustomization_lists_every_manifest_and_only_existing_ones(folder: Path) -> None:
    listed = listed_files(folder)
    assert len(listed) == len(set(listed)), "a file is listed twice"
    assert all((folder / name).is_file() for name in listed), listed
    present = {path.name for path in folder.glob("*.y*ml")} - {KUSTOMIZATION}
    # The example Secret is there to read, never to apply: see manifests.NOT_APPLIED.
    assert set(listed) == present - NOT_APPLIED
    assert present >= NOT_APPLIED
    assert all(path.parent in kustomize_folders() for path in yaml_files())


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("folder", kustomize_folders(), ids=lambda folder: folder.name)
def test_kustomize_builds_the_folder(folder: Path) -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, built.stderr
    objects = [m for m in yaml.safe_load_all(built.stdout) if m is not None]
    names = {(m["kind"], m["metadata"]["name"]) for m in objects}
    assert names == {(m["kind"], m["metadata"]["name"]) for m in applied(folder)}
    for workload in objects:
        if workload["kind"] in ("Deployment", "Job"):
            assert all(c["image"].startswith(f"{IMAGE}:") for c in containers(workload))


@pytest.mark.parametrize("folder", kustomize_folders(), ids=lambda folder: folder.name)
def test_namespaced_objects_live_in_a_namespace_the_folder_creates(folder: Path) -> None:
    manifests = with_examples(folder)
    created = {m["metadata"]["name"] for m in of_kind(manifests, "Namespace")}
    forced = kustomization(folder).get("namespace")
    for manifest in manifests:
        if manifest["kind"] in CLUSTER_SCOPED_KINDS:
            assert "namespace" not in manifest["metadata"]
        else:
            assert manifest["metadata"].get("namespace") in created
            assert forced in (None, manifest["metadata"]["namespace"])


@pytest.mark.parametrize(("folder", "workload"), WORKLOADS, ids=WORKLOAD_IDS)
def test_env_references_resolve(folder: Path, workload: Manifest) -> None:
    """$(VAR) names a variable of the container; every key it reads exists in the folder."""
    manifests = with_examples(folder)
    namespace = workload["metadata"]["namespace"]
    for container in containers(workload):
        defined = {variable["name"] for variable in container.get("env", [])}
        words = [*container.get("command", []), *container.get("args", [])]
        referenced = {name for word in words for name in ENV_REFERENCE.findall(word)}
        assert referenced <= defined, f"{container['name']}: {referenced - defined} undefined"
        for variable in container.get("env", []):
            source = variable.get("valueFrom", {})
            for kind, ref in (
                ("ConfigMap", source.get("configMapKeyRef")),
                ("Secret", source.get("secretKeyRef")),
            ):
                if ref is None:
                    continue
                assert find(manifests, kind, ref["name"])["metadata"]["namespace"] == namespace
                assert ref["key"] in config_values(manifests, kind, ref["name"])


def test_every_secret_key_is_read_by_someone() -> None:
    for folder in kustomize_folders():
        manifests = with_examples(folder)
        read = {
            (ref["name"], ref["key"])
            for workload in manifests
            if workload["kind"] in ("Deployment", "Job")
            for container in containers(workload)
            for variable in container.get("env", [])
            if (ref := variable.get("valueFrom", {}).get("secretKeyRef"))
        }
        read |= {   # mounted as files (a TLS certificate and its key)
            (volume["secret"]["secretName"], item["key"])
            for workload in manifests
            if workload["kind"] in ("Deployment", "Job")
            for volume in pod_spec(workload).get("volumes", [])
            if "secret" in volume
            for item in volume["secret"]["items"]
        }
        for secret in of_kind(manifests, "Secret"):
            name = secret["metadata"]["name"]
            assert {(name, key) for key in config_values(manifests, "Secret", name)} <= read


# Everything the agent is granted; the grid below asks about far more than this.
AGENT_PODS_NAMESPACE = "fleet-jobs"
EXPECTED_AGENT_GRANTS = {
    *((verb, "pods", "", AGENT_PODS_NAMESPACE)
      for verb in ("create", "get", "list", "watch", "delete", "patch")),
    ("get", "pods", "log", AGENT_PODS_NAMESPACE),
    *((verb, "nodes", "", None) for verb in ("list", "watch")),
    *((verb, "pods", "", namespace)
      for verb in ("list", "watch")
      for namespace in (None, "fleet-agent", "default", "kube-system")),
}  # fmt: skip
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection",
         "escalate", "bind", "impersonate", "approve")  # fmt: skip
RESOURCES = (("pods", ""), ("pods", "log"), ("pods", "exec"), ("pods", "attach"),
             ("pods", "status"), ("pods", "eviction"), ("pods", "portforward"), ("nodes", ""),
             ("nodes", "proxy"), ("nodes", "status"), ("secrets", ""), ("configmaps", ""),
             ("serviceaccounts", ""), ("serviceaccounts", "token"), ("events", ""),
             ("namespaces", ""), ("services", ""), ("persistentvolumeclaims", ""))  # fmt: skip
NAMESPACES = (None, AGENT_PODS_NAMESPACE, "fleet-agent", "default", "kube-system")
# Requests for these never name a namespace.
CLUSTER_SCOPED_RESOURCES = frozenset({"nodes", "namespaces"})


def test_the_agent_is_granted_exactly_what_it_needs() -> None:
    granted = {
        (verb, resource, subresource, namespace)
        for verb in VERBS
        for resource, subresource in RESOURCES
        for namespace in NAMESPACES
        if namespace is None or resource not in CLUSTER_SCOPED_RESOURCES
        if agent_rbac_allows(verb, resource, subresource, namespace)
    }
    assert granted == EXPECTED_AGENT_GRANTS
    # Only the core group: the same names in another API group are not granted.
    assert not agent_rbac_allows("create", "pods", "", AGENT_PODS_NAMESPACE, api_group="apps")


def test_no_role_grants_everything() -> None:
    for folder in kustomize_folders():
        for role in [*of_kind(applied(folder), "Role"), *of_kind(applied(folder), "ClusterRole")]:
            for rule in role.get("rules", []):
                for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                    assert "*" not in rule.get(field, []), f"{role['metadata']['name']}: {rule}"
                assert "nonResourceURLs" not in rule


def agent_config() -> dict[str, Any]:
    values = config_values(applied(AGENT_FOLDER), "ConfigMap", "fleet-agent-config")
    config: dict[str, Any] = yaml.safe_load(values["pools.yaml"])
    return config


def test_the_agent_config_describes_a_dataplane_and_its_cluster() -> None:
    config = agent_config()
    dataplane, kube = config["dataplane"], config["kubernetes"]
    assert {"name", "region", "cloud", "store_prefix"} <= set(dataplane)
    assert DNS_LABEL.fullmatch(dataplane["name"])
    assert {"namespace", "default_purchase_type", "prices"} <= set(kube)
    for price in kube["prices"]:
        assert price["price_per_gpu_hour"] > 0
        assert set(price) <= {"purchase_type", "gpu_model", "price_per_gpu_hour"}


def test_the_agent_may_launch_pods_where_its_config_sends_them() -> None:
    manifests = applied(AGENT_FOLDER)
    deployment = find(manifests, "Deployment", "fleet-agent")
    namespace = deployment["metadata"]["namespace"]
    account = pod_spec(deployment)["serviceAccountName"]
    assert (namespace, account) == AGENT_SERVICE_ACCOUNT
    assert find(manifests, "ServiceAccount", account)["metadata"]["namespace"] == namespace
    pods_namespace = agent_config()["kubernetes"]["namespace"]
    assert pods_namespace == AGENT_PODS_NAMESPACE
    assert find(manifests, "Namespace", pods_namespace)
    for verb in ("create", "get", "watch", "delete"):
        assert agent_rbac_allows(verb, "pods", "", pods_namespace)


def test_the_agent_deployment_is_one_pod_at_a_time_and_listens_on_nothing() -> None:
    deployment = find(applied(AGENT_FOLDER), "Deployment", "fleet-agent")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    for container in containers(deployment):
        assert "ports" not in container
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert probe not in container


def test_the_control_plane_serves_tls_and_is_probed_on_the_port_it_serves() -> None:
    manifests = applied(CONTROL_PLANE_FOLDER)
    deployment = find(manifests, "Deployment", "fleet-control-plane")
    # Replicas: each tells the others where it is (its pod IP) for relayed messages.
    assert deployment["spec"]["replicas"] == 2
    (container,) = containers(deployment)
    env = {item["name"]: item for item in container["env"]}
    assert env["FLEET_ADVERTISE"]["value"] == f"$(POD_IP):{GRPC_PORT}"
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    (container,) = containers(deployment)
    args = container["args"]
    assert args[args.index("--listen") + 1] == f"0.0.0.0:{GRPC_PORT}"
    assert "--no-migrate" in args
    assert container["ports"] == [{"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"}]
    # TCP: the kubelet's gRPC probes cannot speak TLS.
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["tcpSocket"] == {"port": GRPC_PORT}
    assert args[args.index("--tls-cert") + 1] == "/etc/fleet/tls/tls.crt"
    assert "--insecure" not in args
    service = find(manifests, "Service", "fleet-control-plane")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP",
         "appProtocol": "grpc"}
    ]  # fmt: skip
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


@pytest.mark.parametrize(("folder", "workload"), WORKLOADS, ids=WORKLOAD_IDS)
def test_workloads_run_locked_down_with_bounded_resources(
    folder: Path, workload: Manifest
) -> None:
    if workload["kind"] == "Deployment":
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
    else:
        assert workload["spec"]["backoffLimit"] >= 1
        assert workload["spec"]["ttlSecondsAfterFinished"] > 0
    for container in containers(workload):
        assert container["image"] == f"{IMAGE}:latest"
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert "add" not in security["capabilities"]
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound])
    images = kustomization(folder)["images"]
    assert [image["name"] for image in images] == [IMAGE]


def mount_volumes(
    workload: Manifest, container: Manifest, manifests: list[Manifest], root: Path
) -> dict[str, Path]:
    """The container's mounts as folders under root (ConfigMap and Secret keys as files)."""
    volumes = {volume["name"]: volume for volume in pod_spec(workload).get("volumes", [])}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        folder = root / mount["mountPath"].lstrip("/")
        folder.mkdir(parents=True, exist_ok=True)
        volume = volumes[mount["name"]]
        for kind, source, name in (("ConfigMap", "configMap", "name"),
                                   ("Secret", "secret", "secretName")):  # fmt: skip
            if source not in volume:
                continue
            data = config_values(manifests, kind, volume[source][name])
            items = volume[source].get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                (folder / item["path"]).write_text(data[item["key"]])
            break
        else:
            assert "emptyDir" in volume, f"unexpected volume {volume}"
        mounts[mount["mountPath"]] = folder
    return mounts


FIELD_EXAMPLES = {"status.podIP": "10.4.0.17", "metadata.name": "fleet-control-plane-0"}


def expand(word: str, environment: dict[str, str]) -> str:
    """$(VAR) as Kubernetes expands it in command and args, from the container's env."""
    return ENV_REFERENCE.sub(lambda match: environment[match.group(1)], word)


def in_container(word: str, mounts: dict[str, Path]) -> str:
    for mount_path, folder in mounts.items():
        if word == mount_path or word.startswith(f"{mount_path}/"):
            return str(folder) + word.removeprefix(mount_path)
    return word


def parse_with_the_cli(argv: list[str]) -> tuple[Any, dict[str, Any]]:
    """The subcommand and its parameters, as `fleet` would parse them; nothing runs."""
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    parent = root.context_class(root, info_name="fleet")
    assert not argv[0].startswith("-"), "global options are not expected here"
    command = root.get_command(parent, argv[0])
    assert command is not None, f"fleet has no command {argv[0]!r}"
    context = command.make_context(argv[0], argv[1:], parent=parent)
    return command, dict(context.params)


@pytest.mark.parametrize(("folder", "workload"), WORKLOADS, ids=WORKLOAD_IDS)
def test_the_commands_parse_with_the_real_cli(
    folder: Path, workload: Manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every option exists and takes its value, the mounted files are where the args say,
    and each variable the container sets is either substituted into the args or read by
    the command as its option's environment variable."""
    manifests = with_examples(folder)
    for container in containers(workload):
        mounts = mount_volumes(workload, container, manifests, tmp_path / container["name"])
        environment: dict[str, str] = {}
        for variable in container.get("env", []):
            source = variable.get("valueFrom", {})
            if "value" in variable:   # may use the variables defined before it
                environment[variable["name"]] = expand(variable["value"], environment)
            elif ref := source.get("fieldRef"):   # what the kubelet fills in
                environment[variable["name"]] = FIELD_EXAMPLES[ref["fieldPath"]]
            elif ref := source.get("configMapKeyRef"):
                environment[variable["name"]] = config_values(manifests, "ConfigMap", ref["name"])[
                    ref["key"]
                ]
            elif ref := source.get("secretKeyRef"):
                environment[variable["name"]] = config_values(manifests, "Secret", ref["name"])[
                    ref["key"]
                ]
        for name in ("FLEET_ADDRESS", "FLEET_JOIN_TOKEN", "FLEET_DATABASE_URL", "FLEET_ADVERTISE"):
            monkeypatch.delenv(name, raising=False)
        for name, value in environment.items():
            monkeypatch.setenv(name, value)

        words = [*container.get("command", []), *container.get("args", [])]
        assert words[0] == "fleet"
        argv = [in_container(expand(word, environment), mounts) for word in words[1:]]
        command, params = parse_with_the_cli(argv)

        values = [v["value"] for v in container.get("env", []) if "value" in v]
        substituted = {name for word in [*words, *values] for name in ENV_REFERENCE.findall(word)}
        read_by_options = {
            param.envvar
            for param in command.params
            if isinstance(param.envvar, str) and params.get(param.name) == environment.get(
                param.envvar
            )
        }
        unused = set(environment) - substituted - read_by_options
        assert not unused, f"{container['name']}: set but never used: {unused}"
