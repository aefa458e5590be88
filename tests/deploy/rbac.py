"""What the agent's service account may do, evaluated from deploy/agent's RBAC manifests.

`agent_rbac_allows(verb, resource, subresource, namespace)` answers as Kubernetes' RBAC
authorizer would for the bindings and rules in the files, so that a test can check every
request an agent makes (e.g. recorded by a fake API server) against what it will be granted.
Only what RBAC manifests can express is modelled: rules are additive, a RoleBinding grants
in its own namespace, a ClusterRoleBinding grants everywhere and on cluster-scoped objects.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from tests.deploy.manifests import DEPLOY, Manifest, applied, find

AGENT_FOLDER = DEPLOY / "agent"
# (namespace, name) of the agent's service account.
AGENT_SERVICE_ACCOUNT = ("fleet-agent", "fleet-agent")
ALL = "*"


@dataclass(frozen=True)
class Rule:
    api_groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]
    resource_names: frozenset[str]

    @staticmethod
    def read(rule: Manifest) -> Rule:
        return Rule(
            api_groups=frozenset(rule.get("apiGroups", [])),
            resources=frozenset(rule.get("resources", [])),
            verbs=frozenset(rule.get("verbs", [])),
            resource_names=frozenset(rule.get("resourceNames", [])),
        )

    def allows(
        self, verb: str, api_group: str, resource: str, subresource: str, name: str | None
    ) -> bool:
        if subresource:
            wanted = {f"{resource}/{subresource}", f"{resource}/*", f"*/{subresource}", ALL}
        else:
            wanted = {resource, ALL}
        return (
            bool(self.api_groups & {api_group, ALL})
            and bool(self.resources & wanted)
            and bool(self.verbs & {verb, ALL})
            and (not self.resource_names or name in self.resource_names)
        )


@dataclass(frozen=True)
class Grant:
    """The rules of one role, granted through one binding: in a namespace, or everywhere."""

    namespace: str | None  # None: every namespace and the cluster-scoped resources
    rules: tuple[Rule, ...]


def _names_service_account(binding: Manifest, namespace: str, name: str) -> bool:
    groups = {"system:serviceaccounts", f"system:serviceaccounts:{namespace}",
              "system:authenticated"}  # fmt: skip
    for subject in binding.get("subjects", []):
        kind = subject.get("kind")
        if kind == "ServiceAccount" and (subject.get("namespace"), subject["name"]) == (
            namespace,
            name,
        ):
            return True
        if kind == "User" and subject["name"] == f"system:serviceaccount:{namespace}:{name}":
            return True
        if kind == "Group" and subject["name"] in groups:
            return True
    return False


def grants(manifests: list[Manifest], namespace: str, name: str) -> list[Grant]:
    """What the bindings among the manifests give to the service account namespace/name."""
    found: list[Grant] = []
    for binding in manifests:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not _names_service_account(binding, namespace, name):
            continue
        ref = binding["roleRef"]
        scope = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        if ref["kind"] == "Role":
            roles = [
                m
                for m in manifests
                if m["kind"] == "Role"
                and m["metadata"]["name"] == ref["name"]
                and m["metadata"].get("namespace") == scope
            ]
            assert len(roles) == 1, f"{binding['metadata']['name']}: Role {ref['name']!r}"
            role = roles[0]
        else:
            role = find(manifests, "ClusterRole", ref["name"])
        found.append(Grant(scope, tuple(Rule.read(rule) for rule in role.get("rules", []))))
    return found


@functools.cache
def agent_grants() -> tuple[Grant, ...]:
    return tuple(grants(applied(AGENT_FOLDER), *AGENT_SERVICE_ACCOUNT))


def agent_rbac_allows(
    verb: str,
    resource: str,
    subresource: str = "",
    namespace: str | None = None,
    *,
    api_group: str = "",
    name: str | None = None,
) -> bool:
    """Would deploy/agent's RBAC let the agent do this request?

    namespace None is a cluster-scoped resource (nodes) or a request across all namespaces
    (list pods cluster-wide); api_group "" is the core group; name is the object's name
    where the request has one (it only matters for rules with resourceNames).
    """
    return any(
        (grant.namespace is None or grant.namespace == namespace)
        and any(rule.allows(verb, api_group, resource, subresource, name) for rule in grant.rules)
        for grant in agent_grants()
    )
