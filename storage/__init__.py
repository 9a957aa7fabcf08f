"""PostgreSQL wiring shared by the consumers, the read side and the command line.

- `storage.recorder`: the event store with the consumer's Kafka positions and the relay's marks
  in it, leases (advisory locks), and `open_ledger`;
- `storage.chain`: the hash chain over the recorded events, extended in each batch's
  transaction (tamper evidence): its canonical encoding, `latest_link` and `verify_chain`;
- `storage.retry`: transient PostgreSQL errors retried with bounded back-off around a use case;
- `storage.roles`: the ledger's writer role and the helpers every role uses.

It imports the domain (`ledger/`), never `consumers/` nor `projections/`.
"""

from storage.chain import ChainReport, latest_link, verify_chain
from storage.recorder import (
    Lease,
    LedgerRecorder,
    StoreNotPrepared,
    ledger_recorder,
    open_ledger,
    postgres_env,
)
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
    "ChainReport",
    "DatabaseRetry",
    "Lease",
    "LedgerRecorder",
    "RetryStopped",
    "StoreNotPrepared",
    "latest_link",
    "ledger_recorder",
    "open_ledger",
    "postgres_env",
    "refresh_connections",
    "verify_chain",
]
