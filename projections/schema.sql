-- Read models of the provincial treasury, fed from the ledger's notification log.
-- Every table is written only by the projector, in the same transaction as pl_tracking.

CREATE TABLE IF NOT EXISTS pl_tracking (
    projection text PRIMARY KEY,
    notification_id bigint NOT NULL
);

-- One row per leg of every accepted transfer: credit legs positive, debit legs negative.
CREATE TABLE IF NOT EXISTS pl_postings (
    notification_id bigint NOT NULL,
    event_id text NOT NULL,
    event_type text NOT NULL,
    account text NOT NULL,
    counter_account text NOT NULL,
    amount_fen bigint NOT NULL,
    category text NOT NULL,
    subcategory text,
    fiscal_year integer NOT NULL,
    occurred_at timestamptz NOT NULL,
    business_date date NOT NULL,
    prior_year_adjustment boolean NOT NULL DEFAULT false,
    PRIMARY KEY (account, notification_id)
);
CREATE INDEX IF NOT EXISTS pl_postings_account_time ON pl_postings (account, occurred_at);
-- The people a subsidy paid for (SubsidyDisbursed.headcount), on both legs; a reversal's is
-- its original's. NULL for every other movement and for a subsidy sent without one. Added
-- after the table (the last column in a fresh store too, so both have the same order), and
-- only where missing (ALTER TABLE would take an exclusive lock on every start).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'pl_postings'::regclass
                   AND attname = 'headcount' AND NOT attisdropped) THEN
        ALTER TABLE pl_postings ADD COLUMN headcount integer;
    END IF;
END $$;
CREATE INDEX IF NOT EXISTS pl_postings_year ON pl_postings (fiscal_year, account);
-- The major-illness premium's few postings (B4's monthly expenditure counts them with the claims).
CREATE INDEX IF NOT EXISTS pl_postings_premium ON pl_postings (account, business_date)
    WHERE category = 'premium.critical_illness';

CREATE TABLE IF NOT EXISTS pl_account_balances (
    account text PRIMARY KEY,
    balance_fen bigint NOT NULL
);

-- Net change per account and business day; closing balances are its running sum.
CREATE TABLE IF NOT EXISTS pl_account_daily (
    account text NOT NULL,
    business_date date NOT NULL,
    net_fen bigint NOT NULL,
    PRIMARY KEY (account, business_date)
);

CREATE TABLE IF NOT EXISTS pl_events (
    event_id text PRIMARY KEY,
    status text NOT NULL,
    reason text,
    detail text,
    event_type text,
    source_service text,
    kafka_topic text,
    kafka_partition integer,
    kafka_offset bigint,
    notification_id bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS pl_rejections (
    reason text NOT NULL,
    source_service text NOT NULL,
    count bigint NOT NULL,
    PRIMARY KEY (reason, source_service)
);

CREATE TABLE IF NOT EXISTS pl_budgets (
    city text NOT NULL,
    scheme text NOT NULL,
    fiscal_year integer NOT NULL,
    income_fen bigint NOT NULL,
    expenditure_fen bigint NOT NULL,
    kind text NOT NULL,
    event_id text NOT NULL,
    PRIMARY KEY (city, scheme, fiscal_year)
);

CREATE TABLE IF NOT EXISTS pl_openings (
    account text PRIMARY KEY,
    fiscal_year integer NOT NULL,
    balance_fen bigint NOT NULL,
    previous_year_income_fen bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS pl_closed_years (
    account text NOT NULL,
    fiscal_year integer NOT NULL,
    income_fen bigint NOT NULL,
    PRIMARY KEY (account, fiscal_year)
);

CREATE TABLE IF NOT EXISTS pl_policies (
    effective_from date NOT NULL,
    notification_id bigint NOT NULL,
    policy jsonb NOT NULL,
    PRIMARY KEY (effective_from, notification_id)
);

-- The figures the read API answers from, kept per page beside pl_postings so no request
-- scans it. Each row carries the postings it sums, so an `as_of` view subtracts the
-- postings after its instant and still knows which groups had any.

-- Net per account, fiscal year, category and sub-category ('' for none).
CREATE TABLE IF NOT EXISTS pl_account_year_totals (
    fiscal_year integer NOT NULL,
    account text NOT NULL,
    category text NOT NULL,
    subcategory text NOT NULL,
    amount_fen bigint NOT NULL,
    postings bigint NOT NULL,
    PRIMARY KEY (fiscal_year, account, category, subcategory)
);

-- Net claim postings (categories `claim.*`) per account and business month (B4's window).
CREATE TABLE IF NOT EXISTS pl_account_monthly_claims (
    account text NOT NULL,
    month date NOT NULL,
    amount_fen bigint NOT NULL,
    postings bigint NOT NULL,
    PRIMARY KEY (account, month)
);

-- I3 as a view: per fiscal year, city, scheme and finance level, the headcounts of the subsidies
-- paid into the city's pooling fund (categories `subsidy.*`), net of reversals (a reversal takes
-- its original's off), beside how many such postings there were and how many had no headcount.
CREATE TABLE IF NOT EXISTS pl_subsidy_headcounts (
    fiscal_year integer NOT NULL,
    city text NOT NULL,
    scheme text NOT NULL,
    level text NOT NULL,
    headcount bigint NOT NULL,
    payments bigint NOT NULL,
    payments_without_headcount bigint NOT NULL,
    PRIMARY KEY (fiscal_year, city, scheme, level)
);

-- A store projected before these tables existed gets them filled from its postings once
-- (no page may land in between: hence the lock). Every posting has a year total, so empty
-- year totals beside postings mean exactly that.
LOCK TABLE pl_postings IN SHARE MODE;
INSERT INTO pl_account_monthly_claims
SELECT account, date_trunc('month', business_date)::date, sum(amount_fen), count(*)
FROM pl_postings
WHERE category LIKE 'claim.%' AND NOT EXISTS (SELECT FROM pl_account_year_totals)
GROUP BY 1, 2;
INSERT INTO pl_account_year_totals
SELECT fiscal_year, account, category, coalesce(subcategory, ''), sum(amount_fen), count(*)
FROM pl_postings
WHERE NOT EXISTS (SELECT FROM pl_account_year_totals)
GROUP BY 1, 2, 3, 4;
-- Subsidies projected before pl_subsidy_headcounts existed kept no headcount: counted as
-- payments without one (a rebuild from zero reads them from the receipts).
INSERT INTO pl_subsidy_headcounts
SELECT fiscal_year, split_part(account, ':', 2), split_part(account, ':', 3),
       substr(category, length('subsidy.') + 1), 0, sum(postings), sum(postings)
FROM pl_account_year_totals
WHERE account LIKE 'city:%:pooling' AND category LIKE 'subsidy.%'
  AND NOT EXISTS (SELECT FROM pl_subsidy_headcounts)
GROUP BY 1, 2, 3, 4;
