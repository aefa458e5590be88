"""Pure decisions of the control plane: no I/O, no clocks of their own, no SQL, no gRPC.

- `phases`: the job and attempt vocabularies and the job state machine.
- `records`: plain values the registry returns and the API renders.
- `placement`: which pool of which dataplane a job goes to, and why the others were not.
- `reconcile`: what a dataplane's reported state means for the attempts we hold there.
- `health`: the two timers per dataplane.
- `usage`: what a project has used, for quotas.
- `policy/`: the routing policy: document, rules, regions and RTT, constraints, quotas.
"""
