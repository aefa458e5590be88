"""Checks on what callers send, with messages that name the field and the reason.

Pure functions: they return the problems found (empty when the input is valid).
"""

from __future__ import annotations

import re

from fleet.v1 import types_pb2

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)

DEFAULT_DOMAIN = "development"
DEFAULT_RETRY_BUDGET = 2
MAX_RETRY_BUDGET = 100
MAX_GPUS = 1024
MAX_CLIENT_KEY = 256
# Literals travel, data stays: inputs are values and URIs, not datasets.
MAX_INPUTS_BYTES = 4 * 1024 * 1024


def name_problem(field: str, value: str, *, required: bool = True) -> str | None:
    if not value:
        return f"{field}: required" if required else None
    if len(value) > 63 or not DNS_LABEL.match(value):
        return (
            f"{field}: {value!r} is not a valid name (lowercase letters, digits and '-', "
            "at most 63, starting and ending with a letter or digit)"
        )
    return None


def spec_problems(spec: types_pb2.JobSpec, client_key: str) -> list[str]:
    problems: list[str | None] = [
        name_problem("spec.project", spec.project),
        name_problem("spec.domain", spec.domain, required=False),
        name_problem("routing.pin_dataplane", spec.routing.pin_dataplane, required=False),
    ]
    if len(spec.name) > 253:
        problems.append("spec.name: longer than 253 characters")
    if not spec.command:
        problems.append("spec.command: required (the program and its arguments to run)")
    elif not spec.command[0]:
        problems.append("spec.command[0]: the program to run is empty")
    for key in spec.env:
        if not ENV_NAME.match(key):
            problems.append(f"spec.env: {key!r} is not a valid environment variable name")
    for key, value in spec.labels.items():
        if len(key) > 63 or not LABEL_KEY.match(key):
            problems.append(f"spec.labels: {key!r} is not a valid label key")
        if len(value) > 63:
            problems.append(f"spec.labels[{key}]: value longer than 63 characters")
    if spec.service_account and (
        len(spec.service_account) > 253 or not DNS_SUBDOMAIN.match(spec.service_account)
    ):
        problems.append(
            f"spec.service_account: {spec.service_account!r} is not a valid Kubernetes name "
            "(lowercase letters, digits, '-' and '.', at most 253)"
        )
    gpus = spec.resources.gpus
    if gpus > MAX_GPUS:
        problems.append(f"resources.gpus: {gpus} is more than {MAX_GPUS}")
    if spec.resources.gpu_model and gpus == 0:
        problems.append("resources.gpu_model: given, but resources.gpus is 0")
    if spec.HasField("timeout") and (spec.timeout.seconds < 0 or spec.timeout.nanos < 0):
        problems.append("spec.timeout: must not be negative")
    if spec.HasField("retry_budget") and spec.retry_budget > MAX_RETRY_BUDGET:
        problems.append(f"spec.retry_budget: {spec.retry_budget} is more than {MAX_RETRY_BUDGET}")
    if len(spec.inputs) > MAX_INPUTS_BYTES:
        problems.append(
            f"spec.inputs: {len(spec.inputs)} bytes is more than {MAX_INPUTS_BYTES} "
            "(4 MiB); pass large data by URI (FlyteFile, FlyteDirectory), not by value"
        )
    if len(client_key) > MAX_CLIENT_KEY:
        problems.append(f"client_key: longer than {MAX_CLIENT_KEY} characters")
    return [p for p in problems if p]
