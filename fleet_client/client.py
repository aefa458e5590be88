"""A synchronous, typed client of the control plane's JobService, AdminService and PolicyService."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import grpc
from fleet.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2, jobs_pb2_grpc, types_pb2

from fleet_client.errors import (
    DeadlineExceeded,
    Internal,
    Unavailable,
    error_from_rpc_error,
)

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")

# The phases after which a job never changes again.
TERMINAL_PHASES: frozenset[types_pb2.JobPhase.ValueType] = frozenset(
    {
        types_pb2.JOB_PHASE_SUCCEEDED,
        types_pb2.JOB_PHASE_FAILED,
        types_pb2.JOB_PHASE_CANCELLED,
    }
)

# wait() reconnects a broken watch with exponential backoff, and gives up once the control
# plane has been unreachable this long in a row (a rolling restart takes seconds, not minutes).
_RECONNECT_MIN_S = 0.2
_RECONNECT_MAX_S = 5.0
_RECONNECT_GIVE_UP_S = 60.0

_USER_AGENT = "flyte-fleet-client"

Metadata = tuple[tuple[str, str], ...]


INSECURE_ENV = "FLEET_INSECURE"
TLS_CA_ENV = "FLEET_TLS_CA"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class TlsConfig:
    """How a client reaches the control plane. The rule: TLS, checked against the system's
    trusted roots, unless told otherwise; ``ca_file`` trusts that CA (PEM) instead;
    plaintext only with ``insecure`` (the demo on 127.0.0.1, or a service mesh's sidecar).

    ``server_name`` is the name checked in the server's certificate (default: the host
    dialed), for addresses no certificate names, such as a pod IP or 127.0.0.1.
    """

    insecure: bool = False
    ca_file: str | None = None
    server_name: str = ""

    def __post_init__(self) -> None:
        if self.insecure and self.ca_file:
            raise ValueError("insecure (plaintext) and a TLS CA file: choose one")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> TlsConfig:
        """FLEET_INSECURE=1 (plaintext) or FLEET_TLS_CA=FILE; neither: TLS, system roots."""
        return cls(
            insecure=env_flag(environ, INSECURE_ENV), ca_file=environ.get(TLS_CA_ENV) or None
        )


def env_flag(environ: Mapping[str, str], name: str) -> bool:
    """A yes/no environment variable (1/true/yes/on or 0/false/no/off, unset is no)."""
    value = environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={environ[name]!r}: use 1 or 0")


DEFAULT_TLS = TlsConfig()   # TLS, the system's trusted roots
MAX_MESSAGE_BYTES = 16 * 1024 * 1024   # as the control plane accepts
PLAINTEXT = TlsConfig(insecure=True)


def _open_channel(address: str, tls: TlsConfig) -> grpc.Channel:
    """The one place a channel is made: TLS by default, plaintext only when asked."""
    options: list[tuple[str, str | int]] = [
        ("grpc.primary_user_agent", _USER_AGENT),
        # A job's inputs and outputs may be 4 MiB each: gRPC's default limit is 4 MiB.
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    if tls.insecure:
        return grpc.insecure_channel(address, options=options)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    roots = Path(tls.ca_file).read_bytes() if tls.ca_file else None
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(roots), options=options)


def _call_metadata(api_key: str) -> Metadata:
    """The one place call metadata is made: the API key, as a bearer credential."""
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


@contextmanager
def _fleet_errors() -> Iterator[None]:
    """The funnel every call and stream runs inside: grpc.RpcError becomes a FleetError."""
    try:
        yield
    except grpc.RpcError as error:
        raise error_from_rpc_error(error) from error


class FleetClient:
    """Talks to one control plane. Every method raises FleetError subclasses, never grpc's.

    Unary calls time out after ``timeout_s``; streams (watch, logs) have no deadline. The
    channel is TLS with the system's roots unless ``tls`` says otherwise (see TlsConfig);
    a CA file that cannot be read raises OSError here.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float = 30.0,
        tls: TlsConfig = DEFAULT_TLS,
        api_key: str = "",
    ) -> None:
        self.address = address
        self.tls = tls
        self._timeout_s = timeout_s
        self._channel = _open_channel(address, tls)
        self._metadata = _call_metadata(api_key)
        self._jobs = jobs_pb2_grpc.JobServiceStub(self._channel)
        self._admin = admin_pb2_grpc.AdminServiceStub(self._channel)
        self._policy = admin_pb2_grpc.PolicyServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- the funnel ------------------------------------------------------------------------

    def _unary(
        self,
        method: grpc.UnaryUnaryMultiCallable[RequestT, ResponseT],
        request: RequestT,
    ) -> ResponseT:
        with _fleet_errors():
            return method(request, timeout=self._timeout_s, metadata=self._metadata)

    def _stream(
        self,
        method: grpc.UnaryStreamMultiCallable[RequestT, ResponseT],
        request: RequestT,
        timeout_s: float | None = None,
    ) -> Iterator[ResponseT]:
        with _fleet_errors():
            call = method(request, timeout=timeout_s, metadata=self._metadata)
            try:
                yield from call
            finally:
                # Ends the RPC on the server too when the caller stops iterating early.
                call.cancel()

    # -- JobService ------------------------------------------------------------------------

    def submit(self, spec: types_pb2.JobSpec, client_key: str = "") -> jobs_pb2.SubmitResponse:
        """Submit a job; a second submit with the same client_key returns the same job."""
        request = jobs_pb2.SubmitRequest(spec=spec, client_key=client_key)
        return self._unary(self._jobs.Submit, request)

    def submit_batch(
        self, jobs: Sequence[tuple[types_pb2.JobSpec, str]]
    ) -> list[jobs_pb2.SubmitResponse]:
        """Submit up to 1000 (spec, client_key) pairs in one call and one transaction: all
        are stored or none; answers in the same order (each idempotent by its key)."""
        request = jobs_pb2.SubmitBatchRequest(
            jobs=[jobs_pb2.SubmitRequest(spec=spec, client_key=key) for spec, key in jobs]
        )
        return list(self._unary(self._jobs.SubmitBatch, request).jobs)

    def get(self, job_id: str) -> types_pb2.Job:
        return self._unary(self._jobs.Get, jobs_pb2.GetJobRequest(job_id=job_id))

    def list_jobs(
        self,
        project: str = "",
        phases: Sequence[types_pb2.JobPhase.ValueType] = (),
        dataplane: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> jobs_pb2.ListJobsResponse:
        """One page of jobs; page_size 0 lets the server choose (100)."""
        request = jobs_pb2.ListJobsRequest(
            project=project,
            phases=phases,
            dataplane=dataplane,
            page_size=page_size,
            page_token=page_token,
        )
        return self._unary(self._jobs.List, request)

    def iter_jobs(
        self,
        project: str = "",
        phases: Sequence[types_pb2.JobPhase.ValueType] = (),
        dataplane: str = "",
        page_size: int = 0,
    ) -> Iterator[types_pb2.Job]:
        """Every matching job, fetching pages as the caller iterates."""
        page_token = ""
        while True:
            page = self.list_jobs(project, phases, dataplane, page_size, page_token)
            yield from page.jobs
            if not page.next_page_token:
                return
            page_token = page.next_page_token

    def cancel(self, job_id: str, reason: str = "") -> types_pb2.Job:
        request = jobs_pb2.CancelJobRequest(job_id=job_id, reason=reason)
        return self._unary(self._jobs.Cancel, request)

    def watch(self, job_id: str, after_seq: int = 0) -> Iterator[types_pb2.JobEvent]:
        """The job's events after after_seq; the stream ends after the job's final event."""
        return self._watch(job_id, after_seq, timeout_s=None)

    def _watch(
        self, job_id: str, after_seq: int, timeout_s: float | None
    ) -> Iterator[types_pb2.JobEvent]:
        request = jobs_pb2.WatchJobRequest(job_id=job_id, after_seq=after_seq)
        return self._stream(self._jobs.Watch, request, timeout_s)

    def logs(self, job_id: str, attempt_id: str = "", tail_bytes: int = 0) -> Iterator[bytes]:
        """The raw log bytes of one attempt (default: the latest).

        Raises Internal with the dataplane's message when the log could not be read.
        """
        request = jobs_pb2.JobLogsRequest(
            job_id=job_id, attempt_id=attempt_id, tail_bytes=tail_bytes
        )
        for chunk in self._stream(self._jobs.Logs, request):
            if chunk.error:
                raise Internal(chunk.error)
            if chunk.data:
                yield chunk.data
            if chunk.eof:
                return

    def wait(
        self,
        job_id: str,
        timeout_s: float | None = None,
        on_event: Callable[[types_pb2.JobEvent], None] | None = None,
    ) -> types_pb2.Job:
        """Follow the job's events until it is SUCCEEDED, FAILED or CANCELLED; return it.

        on_event sees every event of the job from its first, each once: a broken watch is
        reopened after the last event seen. Raises NotFound or Unavailable at once when the
        job or the control plane cannot be reached at the start; later, Unavailable only
        once the control plane has been unreachable for a minute in a row; and
        DeadlineExceeded after timeout_s.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.get(job_id)
        after_seq = 0
        backoff_s = _RECONNECT_MIN_S
        unreachable_since: float | None = None
        while True:
            try:
                for event in self._watch(job_id, after_seq, _remaining(deadline)):
                    unreachable_since = None
                    backoff_s = _RECONNECT_MIN_S
                    after_seq = event.seq
                    if on_event is not None:
                        on_event(event)
                    if event.phase in TERMINAL_PHASES:
                        return self.get(job_id)
                # The stream ended without a final event (e.g. a replica shut down): ask.
                job = self.get(job_id)
                if job.phase in TERMINAL_PHASES:
                    return job
            except Unavailable:
                now = time.monotonic()
                if unreachable_since is None:
                    unreachable_since = now
                if now - unreachable_since >= _RECONNECT_GIVE_UP_S:
                    raise
            except DeadlineExceeded:
                if _remaining(deadline) == 0.0:
                    raise DeadlineExceeded(_not_finished(job_id, timeout_s)) from None
                raise
            remaining = _remaining(deadline)
            if remaining == 0.0:
                raise DeadlineExceeded(_not_finished(job_id, timeout_s))
            time.sleep(backoff_s if remaining is None else min(backoff_s, remaining))
            backoff_s = min(backoff_s * 2, _RECONNECT_MAX_S)

    # -- AdminService ----------------------------------------------------------------------

    def list_dataplanes(self) -> list[admin_pb2.Dataplane]:
        response = self._unary(self._admin.ListDataplanes, admin_pb2.ListDataplanesRequest())
        return list(response.dataplanes)

    def cordon_dataplane(self, name: str, reason: str = "") -> admin_pb2.Dataplane:
        request = admin_pb2.CordonDataplaneRequest(name=name, reason=reason)
        return self._unary(self._admin.CordonDataplane, request)

    def drain_dataplane(
        self, name: str, deadline: timedelta, reason: str = ""
    ) -> admin_pb2.Dataplane:
        request = admin_pb2.DrainDataplaneRequest(name=name, reason=reason)
        request.deadline.FromTimedelta(deadline)
        return self._unary(self._admin.DrainDataplane, request)

    def uncordon_dataplane(self, name: str) -> admin_pb2.Dataplane:
        request = admin_pb2.UncordonDataplaneRequest(name=name)
        return self._unary(self._admin.UncordonDataplane, request)

    def enroll_dataplane(
        self, name: str, region: str, cloud: str, labels: dict[str, str] | None = None
    ) -> admin_pb2.JoinTokenResponse:
        request = admin_pb2.EnrollDataplaneRequest(
            name=name, region=region, cloud=cloud, labels=labels or {}
        )
        return self._unary(self._admin.EnrollDataplane, request)

    def rotate_join_token(self, name: str) -> admin_pb2.JoinTokenResponse:
        request = admin_pb2.RotateJoinTokenRequest(name=name)
        return self._unary(self._admin.RotateJoinToken, request)

    def revoke_join_token(self, name: str) -> admin_pb2.Dataplane:
        request = admin_pb2.RevokeJoinTokenRequest(name=name)
        return self._unary(self._admin.RevokeJoinToken, request)

    def create_api_key(
        self, name: str, role: str, projects: Sequence[str]
    ) -> admin_pb2.CreateApiKeyResponse:
        request = admin_pb2.CreateApiKeyRequest(name=name, role=role, projects=list(projects))
        return self._unary(self._admin.CreateApiKey, request)

    def list_api_keys(self) -> list[admin_pb2.ApiKey]:
        return list(self._unary(self._admin.ListApiKeys, admin_pb2.ListApiKeysRequest()).keys)

    def revoke_api_key(self, key_id: str) -> admin_pb2.ApiKey:
        return self._unary(self._admin.RevokeApiKey, admin_pb2.RevokeApiKeyRequest(id=key_id))

    def list_audit_events(
        self, *, actor: str = "", action: str = "", target: str = "",
        since: datetime | None = None, limit: int = 0,
    ) -> list[admin_pb2.AuditEvent]:
        request = admin_pb2.ListAuditEventsRequest(
            actor=actor, action=action, target=target, limit=limit
        )
        if since is not None:
            request.since.FromDatetime(since)
        return list(self._unary(self._admin.ListAuditEvents, request).events)

    # -- PolicyService ---------------------------------------------------------------------

    def apply_policy(
        self,
        document: str,
        *,
        author: str = "",
        comment: str = "",
        dry_run: bool = False,
        replay_jobs: int = 0,
    ) -> admin_pb2.ApplyPolicyResponse:
        """Validate the YAML document and make it a new version (``applied``).

        With dry_run nothing is applied: ``changes`` says how the last replay_jobs jobs
        (0: the server's default, 200) would have routed differently. A document that does
        not validate raises InvalidArgument whose message has one problem per line.
        """
        request = admin_pb2.ApplyPolicyRequest(
            document=document,
            author=author,
            comment=comment,
            dry_run=dry_run,
            replay_jobs=replay_jobs,
        )
        return self._unary(self._policy.ApplyPolicy, request)

    def get_policy(self, version: int = 0) -> admin_pb2.PolicyVersion:
        """One version with its document; 0 is the current one."""
        return self._unary(self._policy.GetPolicy, admin_pb2.GetPolicyRequest(version=version))

    def list_policy_versions(self) -> admin_pb2.ListPolicyVersionsResponse:
        """Every version, newest first, without documents; ``current`` is the one in force."""
        request = admin_pb2.ListPolicyVersionsRequest()
        return self._unary(self._policy.ListPolicyVersions, request)

    def rollback_policy(self, version: int, author: str = "") -> admin_pb2.PolicyVersion:
        """Apply an old version's document again; returns the new version that holds it."""
        request = admin_pb2.RollbackPolicyRequest(version=version, author=author)
        return self._unary(self._policy.RollbackPolicy, request)

    def explain_job(self, job_id: str) -> admin_pb2.Explanation:
        """Why the job went where it went, or why it waits: every candidate pool."""
        request = admin_pb2.ExplainJobRequest(job_id=job_id)
        return self._unary(self._policy.ExplainJob, request)

    def explain_placement(self, spec: types_pb2.JobSpec) -> admin_pb2.Explanation:
        """Where a job with this spec would go under the current policy (nothing is submitted)."""
        request = admin_pb2.ExplainPlacementRequest(spec=spec)
        return self._unary(self._policy.ExplainPlacement, request)


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(deadline - time.monotonic(), 0.0)


def _not_finished(job_id: str, timeout_s: float | None) -> str:
    return f"job {job_id} did not finish within {timeout_s:g}s"
