"""Who may do what: API keys with a role and the projects they cover, and the secrets
(API keys, dataplane join tokens) as the control plane stores them, hashed.

| role      | read jobs, logs, explain | list dataplanes, read policy | submit, cancel | admin |
|-----------|--------------------------|------------------------------|----------------|-------|
| viewer    | its projects             | yes                          | no             | no    |
| submitter | its projects             | yes                          | its projects   | no    |
| admin     | every project            | yes                          | every project  | yes   |
| replica   | every project            | yes                          | no             | no    |

"admin" covers the policy (apply, rollback), dataplanes (enroll, rotate or revoke their
tokens, cordon, drain, uncordon), API keys and the audit log. "replica" is the key each
control-plane replica makes for itself, to relay messages and log requests to the others.

A secret is shown once, when it is made; the registry keeps its SHA-256 only (the secrets
are 32 random bytes, so a fast hash is enough). An API key reads ``fleet_<id>_<secret>``:
the id finds the row and names the key in logs and errors; the secret never appears there.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

ALL_PROJECTS = "*"
KEY_PREFIX = "fleet_"
TOKEN_PREFIX = "fleetdp_"
_KEY = re.compile(r"^fleet_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


class Role(StrEnum):
    VIEWER = "viewer"
    SUBMITTER = "submitter"
    ADMIN = "admin"
    REPLICA = "replica"


class Action(StrEnum):
    READ = "read"            # jobs, their events, logs and explanations
    VIEW_FLEET = "view"      # dataplanes, policy versions, what-if placement
    SUBMIT = "submit"
    CANCEL = "cancel"
    ADMIN = "admin"
    RELAY = "relay"          # replica to replica


ROLE_ACTIONS: dict[Role, frozenset[Action]] = {
    Role.VIEWER: frozenset({Action.READ, Action.VIEW_FLEET}),
    Role.SUBMITTER: frozenset({Action.READ, Action.VIEW_FLEET, Action.SUBMIT, Action.CANCEL}),
    Role.ADMIN: frozenset({Action.READ, Action.VIEW_FLEET, Action.SUBMIT, Action.CANCEL,
                           Action.ADMIN, Action.RELAY}),
    Role.REPLICA: frozenset({Action.READ, Action.VIEW_FLEET, Action.RELAY}),
}
# Actions on one project's jobs; the others concern the whole fleet.
PROJECT_ACTIONS = frozenset({Action.READ, Action.SUBMIT, Action.CANCEL})


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key (or everyone, when the control plane runs without auth)."""

    key_id: str
    name: str
    role: Role
    projects: frozenset[str]

    @property
    def all_projects(self) -> bool:
        return ALL_PROJECTS in self.projects or self.role in (Role.ADMIN, Role.REPLICA)

    def may(self, action: Action, project: str = "") -> bool:
        if action not in ROLE_ACTIONS[self.role]:
            return False
        if action in PROJECT_ACTIONS and project:
            return self.all_projects or project in self.projects
        return True

    def denial(self, action: Action, project: str = "") -> str:
        """Why not, for PERMISSION_DENIED (names the key, never its secret)."""
        who = f"API key {self.name!r} ({self.role.value}"
        scope = "" if self.all_projects else " of " + ", ".join(sorted(self.projects))
        if action not in ROLE_ACTIONS[self.role]:
            return f"{who}{scope}) may not {action.value}: that needs the admin role"
        return f"{who}{scope}) may not {action.value} in project {project!r}"

    def describe(self) -> str:
        """For the audit log: the key's name and id."""
        return f"{self.name} ({self.key_id})" if self.key_id else self.name


EVERYONE = Principal("", "anyone (auth disabled)", Role.ADMIN, frozenset({ALL_PROJECTS}))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def new_api_key() -> tuple[str, str, str]:
    """(key id, the key to hand out once, the hash to store)."""
    key_id = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return key_id, key, hash_secret(key)


def api_key_id(key: str) -> str | None:
    """The id of a well-formed key, or None."""
    match = _KEY.match(key)
    return match.group(1) if match else None


def new_join_token() -> tuple[str, str]:
    """(a dataplane's join token to hand out once, the hash to store)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, hash_secret(token)
