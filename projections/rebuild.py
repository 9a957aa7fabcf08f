"""The read tables rebuilt from zero, set-based: PostgreSQL does the bulk, in one transaction.

An empty projection (position 0) is filled in one pass instead of page by page. The
accepted fates, which are nearly every notification, never leave the server: their stored
JSON is parsed there (`convert_from(state, 'UTF8')::jsonb`), each transfer becomes its two
postings in one `INSERT ... SELECT`, and every total is one `GROUP BY` over the postings.
The few other notifications (rejections, budgets, year closes, policies) go through the
projector's own page logic (`_Page`) in Python. The position moves to the last notification
included in the same transaction, so a rebuild is applied whole or not at all; the
projector then goes on page by page from there.

It computes what applying every page in order computes (tests/test_projections.py holds
both to an independent model); where the two could differ it is not used:
- a stored state PostgreSQL cannot read as JSON (the transaction fails; the rebuild is
  abandoned for the page-by-page way);
- nothing to do (position above 0).
"""

from __future__ import annotations

from typing import Any

import psycopg
import structlog
from eventsourcing.utils import get_topic
from psycopg import sql

from ledger.aggregates import Receipt
from ledger.application import Ledger
from projections.roles import READ_TABLES

log = structlog.get_logger("projections")

PAGE_SIZE = 10_000
#: The read tables a rebuild fills (all but its position).
_FILLED = tuple(t for t in READ_TABLES if t.startswith("pl_") and t != "pl_tracking")

# The accepted fates, parsed once: the columns the tables need.
_ACCEPTED = """
CREATE TEMP TABLE pl_rebuild_accepted ON COMMIT DROP AS
SELECT notification_id,
       s->>'event_id' AS event_id,
       s->>'event_type' AS event_type,
       CASE WHEN jsonb_typeof(s->'transfer') = 'object' THEN s->'transfer' END AS t,
       jsonb_typeof(s->'split') = 'object' AS split,  -- a receipt keeps `split: null` when it has none
       CASE WHEN s->>'event_type' = 'ClaimPaid' THEN s->'payload'->>'hospital_level' END AS subcategory,
       CASE WHEN s->>'event_type' = 'SubsidyDisbursed' THEN (s->'payload'->>'headcount')::integer END AS headcount,
       coalesce(nullif(s->'payload'->>'source', ''), 'unknown') AS source_service,
       s->'source' AS src,
       CASE WHEN s->>'event_type' = 'OpeningBalanceRecorded' THEN s->'payload' END AS opening
FROM (SELECT notification_id, convert_from(state, 'UTF8')::jsonb AS s
      FROM {events} WHERE topic = %(accepted)s AND notification_id <= %(upto)s
      OFFSET 0) AS stored  -- kept a subquery: flattened, each use of `s` parsed the JSON again
"""

# Both legs of every transfer: credit positive, debit negative. A reversal takes its
# original's sub-category (the hospital level of a claim) and headcount (a subsidy's), hence
# the second statement.
_POSTINGS = """
INSERT INTO pl_postings
SELECT a.notification_id, a.event_id, a.event_type, leg.account, leg.counter,
       leg.sign * (a.t->>'amount_fen')::bigint, a.t->>'category', {subcategory},
       (a.t->>'fiscal_year')::integer, (a.t->>'occurred_at')::timestamptz,
       (((a.t->>'occurred_at')::timestamptz AT TIME ZONE 'UTC') + interval '8 hours')::date,
       coalesce((a.t->>'prior_year_adjustment')::boolean, false), {headcount}
FROM pl_rebuild_accepted a
CROSS JOIN LATERAL (VALUES (a.t->>'credit_account', a.t->>'debit_account', 1),
                           (a.t->>'debit_account', a.t->>'credit_account', -1)) AS leg(account, counter, sign)
WHERE a.t IS NOT NULL AND {which}
"""
_ORIGINAL_SUBCATEGORY = (
    "coalesce(a.subcategory, (SELECT o.subcategory FROM pl_rebuild_accepted orig"
    " JOIN pl_postings o ON o.account = leg.account AND o.notification_id = orig.notification_id"
    " WHERE orig.event_id = a.t->>'reversal_of' LIMIT 1))"
)
_ORIGINAL_HEADCOUNT = (
    "coalesce(a.headcount, (SELECT orig.headcount FROM pl_rebuild_accepted orig"
    " WHERE orig.event_id = a.t->>'reversal_of' LIMIT 1))"
)

_TOTALS = """
INSERT INTO pl_account_balances SELECT account, sum(amount_fen) FROM pl_postings GROUP BY account;
INSERT INTO pl_account_daily
SELECT account, business_date, sum(amount_fen) FROM pl_postings GROUP BY account, business_date;
INSERT INTO pl_account_year_totals
SELECT fiscal_year, account, category, coalesce(subcategory, ''), sum(amount_fen), count(*)
FROM pl_postings GROUP BY 1, 2, 3, 4;
INSERT INTO pl_account_monthly_claims
SELECT account, date_trunc('month', business_date)::date, sum(amount_fen), count(*)
FROM pl_postings WHERE category LIKE 'claim.%%' GROUP BY 1, 2;
INSERT INTO pl_subsidy_headcounts
SELECT fiscal_year, split_part(account, ':', 2), split_part(account, ':', 3),
       substr(category, length('subsidy.') + 1), coalesce(sum(sign(amount_fen) * headcount), 0),
       count(*), count(*) FILTER (WHERE headcount IS NULL)
FROM pl_postings WHERE account LIKE 'city:%%:pooling' AND category LIKE 'subsidy.%%' GROUP BY 1, 2, 3, 4;
INSERT INTO pl_openings
SELECT DISTINCT ON (t->>'credit_account') t->>'credit_account', (opening->>'fiscal_year')::integer,
       (opening->>'balance_fen')::bigint, (opening->>'previous_year_income_fen')::bigint
FROM pl_rebuild_accepted WHERE opening IS NOT NULL AND t IS NOT NULL
ORDER BY t->>'credit_account', notification_id;
"""

# One fate per event_id, as applying them in order leaves it: the first that is not
# `unprocessable` stands; failing one, the latest `unprocessable`.
_EVENTS = """
INSERT INTO pl_events
SELECT DISTINCT ON (event_id) * FROM (
    SELECT event_id, 'accepted' AS status, NULL::text AS reason, NULL::text AS detail, event_type,
           source_service, src->>'topic' AS kafka_topic, (src->>'partition')::integer AS kafka_partition,
           (src->>'offset')::bigint AS kafka_offset, notification_id
    FROM pl_rebuild_accepted WHERE event_id IS NOT NULL
    UNION ALL
    SELECT * FROM pl_stage_events
) AS fates
ORDER BY event_id, reason IS NOT DISTINCT FROM 'unprocessable',
         CASE WHEN reason IS NOT DISTINCT FROM 'unprocessable' THEN -notification_id ELSE notification_id END
"""


class _SplitEvents(Exception):
    """The store holds an event booked as two transfers (E6 split): its payer's two legs make one
    posting, which the page-by-page projector adds up and these statements do not."""


def _first(row: Any) -> Any:
    return row[0] if row else None


def rebuild_from_zero(conn: psycopg.Connection[Any], ledger: Ledger, projection: str) -> int | None:
    """Fills the empty read tables up to the last recorded notification, in one transaction.

    Returns how many notifications it applied, or None if the projection is not at zero (or
    the store cannot be rebuilt this way: then nothing changed and paging goes on).
    """
    from projections.projector import _STAGING_DDL, TOPICS, _first_fates, _Page

    # the few notifications the page logic handles: every projected kind but accepted fates
    others_topics = tuple(t for t in TOPICS if t != get_topic(Receipt.Accepted))

    events = sql.Identifier(ledger.recorder.events_table_name)  # type: ignore[attr-defined]
    try:
        with conn.transaction():
            row = conn.execute(
                "SELECT notification_id FROM pl_tracking WHERE projection = %s FOR UPDATE", (projection,)
            ).fetchone()
            if row is None or row[0] != 0:
                return None
            found = conn.execute(sql.SQL("SELECT max(notification_id) FROM {}").format(events)).fetchone()
            upto = int(found[0]) if found and found[0] is not None else 0
            if upto == 0:
                return None
            params = {"accepted": get_topic(Receipt.Accepted), "upto": upto}
            with conn.cursor() as cur:
                cur.execute(sql.SQL(_ACCEPTED).format(events=events), params)
                accepted = cur.rowcount
                cur.execute("SELECT max(notification_id) FROM pl_rebuild_accepted")
                last = _first(cur.fetchone()) or 0  # the position paging would reach: a projected kind's
                cur.execute("SELECT EXISTS (SELECT FROM pl_rebuild_accepted WHERE split)")
                if _first(cur.fetchone()):
                    raise _SplitEvents
                cur.execute(sql.SQL(_POSTINGS).format(
                    subcategory=sql.SQL("a.subcategory"), headcount=sql.SQL("a.headcount"),
                    which=sql.SQL("a.t->>'reversal_of' IS NULL")))
                cur.execute("CREATE INDEX ON pl_rebuild_accepted (event_id)")  # reversals find originals
                cur.execute("ANALYZE pl_rebuild_accepted")
                cur.execute(sql.SQL(_POSTINGS).format(
                    subcategory=sql.SQL(_ORIGINAL_SUBCATEGORY), headcount=sql.SQL(_ORIGINAL_HEADCOUNT),
                    which=sql.SQL("a.t->>'reversal_of' IS NOT NULL")))
                cur.execute(_TOTALS)
                page, others = _Page(), 0
                for notification in ledger.stored_notifications(others_topics, PAGE_SIZE, stop=upto):
                    page.add(notification.id, ledger.mapper.to_domain_event(notification))
                    others += 1
                    last = max(last, notification.id)
                cur.execute(_STAGING_DDL)
                with cur.copy("COPY pl_stage_events FROM STDIN") as copy:
                    for fate in _first_fates(page.events):
                        copy.write_row(fate)
                cur.execute(_EVENTS)
                page.events = []
                page.write_others(cur)
                cur.execute("UPDATE pl_tracking SET notification_id = %s WHERE projection = %s", (last, projection))
                # The planner's statistics of the tables just filled: without them the read API's
                # budgets took 90-150 ms instead of 3 ms until autovacuum came by. A role that does
                # not own them gets a warning and no statistics (as before).
                cur.execute(sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(map(sql.Identifier, _FILLED))))
    except psycopg.DataError as error:  # a stored state PostgreSQL does not read as JSON
        log.warning("projection_rebuild_abandoned", error=str(error), action="projecting page by page")
        return None
    except _SplitEvents:
        log.info("projection_rebuild_skipped", reason="the store holds events booked as two transfers (E6)",
                 action="projecting page by page")
        return None
    log.info("projection_rebuilt", notifications=accepted + others, up_to_notification_id=last)
    return accepted + others

