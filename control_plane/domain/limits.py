"""How much any caller or agent may send: every limit of the control plane's API in one place.

Checks against these numbers live in `api/validation.py`; README.md ("Limits") has the table
for users. Structural input over a limit is refused with INVALID_ARGUMENT naming the field
(nothing is stored); free text an agent reports about its attempts (reason, message, a log
error) is cut to its limit instead, so that an agent is never refused for what a task
printed. Bytes are counted in UTF-8, characters as Python counts them (as Postgres does).

Counts and lengths are accepted at the limit and refused above it. Strings that are
stored or looked up must not hold NUL (Postgres refuses it in text). Pure: wire.py (below
the API in the layers) cuts with these numbers too.
"""

from __future__ import annotations

from datetime import timedelta

# A user's cancel reason and an operator's cordon reason: 1024 characters.
from control_plane.domain.cordon import MAX_REASON as MAX_REASON

KIB = 1024
MIB = 1024 * KIB

# -- names and ids ------------------------------------------------------------------------
MAX_NAME = 63                      # DNS label
MAX_SUBDOMAIN = 253                # DNS subdomain (service accounts, label key prefixes)
MAX_ID = 64                        # job, attempt and log request ids
MAX_CLIENT_KEY = 256
MAX_REGION = 64                    # regions, clouds, origin_region (columns of 64)

# -- job spec -----------------------------------------------------------------------------
MAX_JOB_NAME = 253
MAX_IMAGE = 512
MAX_COMMAND_ARGS = 256
MAX_ARG_BYTES = 16 * KIB
MAX_COMMAND_BYTES = 256 * KIB
MAX_ENV_ENTRIES = 256
MAX_ENV_NAME = 256
MAX_ENV_VALUE_BYTES = 32 * KIB
MAX_ENV_BYTES = 256 * KIB          # names and values together
MAX_LABELS = 64
MAX_LABEL_NAME = 63                # the part after the optional "prefix/"
MAX_LABEL_VALUE = 63
# Literals travel, data stays: inputs are values and URIs, not datasets.
MAX_INPUTS_BYTES = 4 * MIB
MAX_RETRY_BUDGET = 100
MAX_TIMEOUT = timedelta(days=30)
MAX_GPUS = 1024
MAX_GPU_MEMORY_GB = 65536
MAX_GPU_MODEL = 64
MAX_CPU_MILLIS = 1_024_000         # 1024 cores
MAX_MEMORY_BYTES = 64 * 1024 * 1024 * MIB   # 64 TiB

# -- lists and logs -----------------------------------------------------------------------
MAX_PAGE = 1000
MAX_SUBMIT_BATCH = 1000            # jobs in one SubmitBatch
MAX_UPDATE_STATUSES = 1000         # attempt changes in one AttemptUpdate (status + more)
MAX_PAGE_TOKEN = 256               # ours are about 60
MAX_LIST_PHASES = 16
MAX_LOG_TAIL = 16 * MIB
# Event sequence numbers and policy versions are database integers.
MAX_SEQ = 2**63 - 1
MAX_POLICY_VERSION = 2**31 - 1

# -- the agent stream ---------------------------------------------------------------------
MAX_CREDENTIAL = 1 * KIB
MAX_AGENT_VERSION = 64
MAX_POOLS = 256
MAX_ATTEMPTS = 10_000
MAX_POOL_GPUS = 1_000_000
MAX_PRICE_PER_GPU_HOUR = 1_000_000.0
MAX_INTERCONNECT = 64
MAX_OUTPUTS_BYTES = 4 * MIB
MAX_ATTEMPT_REASON = 64            # cut, not refused (the column is String(64))
MAX_ATTEMPT_MESSAGE = 4096         # cut, not refused
MAX_LOG_CHUNK_BYTES = 64 * KIB
MAX_LOG_ERROR = 4096               # cut, not refused
MAX_DELIVER_MESSAGES = 10_000      # ReplicaService.Deliver

# -- routing policy -----------------------------------------------------------------------
MAX_POLICY_BYTES = 256 * KIB
MAX_POLICY_DEPTH = 64              # YAML nesting; the YAML composer recurses per level
MAX_AUTHOR = 256
MAX_COMMENT = 4096
MAX_REPLAY = 5000
MAX_DRAIN_DEADLINE = timedelta(days=30)

# -- what goes back -----------------------------------------------------------------------
# gRPC sends a status message percent-encoded in a trailer, and clients drop trailers over
# 8 KiB (soft) / 16 KiB (hard) with RESOURCE_EXHAUSTED, losing the message: stay well below.
MAX_STATUS_BYTES = 4 * KIB
_CUT = " … (cut)"


def clipped(text: str, max_chars: int) -> str:
    """Free text cut to max_chars, without NUL (which Postgres cannot store)."""
    text = text.replace("\x00", "\ufffd")
    if len(text) <= max_chars:
        return text
    return text[: max_chars - 1] + "…"


def status_message(text: str) -> str:
    """A status message that fits MAX_STATUS_BYTES once percent-encoded on the wire."""
    if _wire_bytes(text) <= MAX_STATUS_BYTES:
        return text
    budget, used = MAX_STATUS_BYTES - len(_CUT), 0
    for index, char in enumerate(text):
        used += _wire_bytes(char)
        if used > budget:
            return text[:index] + _CUT
    return text  # unreachable: the whole text was over the budget


def _wire_bytes(text: str) -> int:
    """Its size percent-encoded as gRPC sends it: printable ASCII but '%' as is, else %XX."""
    return sum(
        1 if 0x20 <= b <= 0x7E and b != 0x25 else 3
        for b in text.encode("utf-8", "replace")
    )
