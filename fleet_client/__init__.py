"""The typed client of a flyte-fleet control plane (JobService, AdminService, PolicyService).

    with FleetClient("fleet.example.com:50051") as fleet:   # TLS, the system's roots
        job = fleet.submit(spec, client_key="...").job
        final = fleet.wait(job.id)

    FleetClient(address, tls=TlsConfig(ca_file="ca.pem"))   # trust this CA instead
    FleetClient("127.0.0.1:50051", tls=PLAINTEXT)            # plaintext: only when asked

Every method raises one of these instead of ``grpc.RpcError`` (see fleet_client.errors);
``message`` is the server's status details, verbatim, and ``code`` the grpc.StatusCode:

    FleetError(message, code)
    ├── InvalidArgument       the request is malformed (the message names the field)
    ├── FailedPrecondition    well formed, but not allowed in the current state
    ├── NotFound
    ├── AlreadyExists
    ├── Unauthenticated
    ├── PermissionDenied
    ├── ResourceExhausted
    ├── Unavailable           the control plane cannot be reached
    ├── DeadlineExceeded      no answer in time
    └── Internal              anything else
"""

from fleet_client.client import PLAINTEXT, TERMINAL_PHASES, FleetClient, TlsConfig
from fleet_client.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    FleetError,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    error_from_status,
)

__all__ = [
    "PLAINTEXT",
    "TERMINAL_PHASES",
    "AlreadyExists",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FleetClient",
    "FleetError",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "TlsConfig",
    "Unauthenticated",
    "Unavailable",
    "error_from_status",
]
