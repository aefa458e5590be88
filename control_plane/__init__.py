"""The flyte-fleet control plane.

Layers, each importing only those below it (checked by import-linter in the tests):

- `server`: wiring and the process entry point (`serve`).
- `api`: the gRPC servicers (JobService, AgentService, AdminService); validation at the edge.
- `scheduler`: reads the queue and the fleet, applies the placement plan, runs the lost timer.
- `sessions`: the live agent streams held by this process; job watcher wake-ups.
- `wire`: conversions between records and fleet.v1 messages.
- `registry`: the database (SQLAlchemy stays inside); returns plain records.
- `domain`: pure decisions: phases and the job state machine, placement, reconcile, timers.
"""

from control_plane.server import (
    RunningControlPlane,
    ServiceInstaller,
    SettingsError,
    serve,
    start,
)
from control_plane.settings import ControlPlaneSettings

__all__ = [
    "ControlPlaneSettings",
    "RunningControlPlane",
    "ServiceInstaller",
    "SettingsError",
    "serve",
    "start",
]
