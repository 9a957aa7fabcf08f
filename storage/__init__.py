"""PostgreSQL wiring shared by the consumers, the read side and the command line.

- `storage.recorder`: the event store with the consumer's Kafka positions and the relay's marks
  in it, leases (advisory locks), and `open_ledger`;
- `storage.retry`: transient PostgreSQL errors retried with bounded back-off around a use case;
- `storage.roles`: the ledger's writer role and the helpers every role uses.

It imports the domain (`ledger/`), never `consumers/` nor `projections/`.
"""

from storage.recorder import Lease, LedgerRecorder, ledger_recorder, open_ledger, postgres_env
from storage.retry import (
    DB_RETRY_MAX_S,
    TRANSIENT_DATABASE_ERRORS,
    DatabaseRetry,
    RetryStopped,
    refresh_connections,
)

__all__ = [
    "DB_RETRY_MAX_S",
    "TRANSIENT_DATABASE_ERRORS",
    "DatabaseRetry",
    "Lease",
    "LedgerRecorder",
    "RetryStopped",
    "ledger_recorder",
    "open_ledger",
    "postgres_env",
    "refresh_connections",
]
