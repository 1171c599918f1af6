"""What the dispatcher's parts hand each other: a batch allowed to run, and a claimed request waiting for a slot.

A module of their own because all four parts use them (claims.py makes them, scheduler.py queues them,
attempts.py runs them, outcomes.py records their end): in any one of those modules they would make
the imports go round in a circle.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from batchgate.store.records import ClaimedRequest

# One logger for the dispatcher and its parts: its name is in every log line, and a filter on it
# (DEBUG for one line a request) keeps catching what the split moved to other modules.
log = logging.getLogger("batchgate.engine.dispatcher")


@dataclass(frozen=True, slots=True)
class ActiveBatch:
    id: str
    model: str
    endpoint: str
    input_file_id: str | None
    expires_at: int
    pinned_deployment: str | None = None
    team: str = ""  # "" for objects the admin created
    team_weight: float = 1.0
    key_id: str | None = None  # the API key that created it (guardrails may be per key)


@dataclass(slots=True)
class Ready:
    """A claimed row with its request parsed, waiting for a free slot."""

    batch: ActiveBatch
    request: ClaimedRequest
    body: dict[str, Any] | None  # None: the stored line could not be read back
    endpoint: str
    tokens: int  # estimated, for TPM budgets
