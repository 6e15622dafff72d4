-- mini-scan schema, version 1. `mini-scan migrate` applies each migration
-- once and records it with a checksum in refinery_schema_history: never edit
-- this file once released, add migrations/V<n>__<name>.sql instead. Its
-- statements are idempotent because databases made by versions that re-ran it
-- on every `migrate` (table schema_migrations) run it once more on upgrade.

-- The newest observation of every (ip, port, service).
--
-- Newest wins by the order (last_scanned, published_at, message_id): the scan's
-- own timestamp first, then the Pub/Sub publish time, then the message id
-- compared bytewise (COLLATE "C"), so every delivery order converges to the
-- same row. `fillfactor` leaves room on each page so that updates, which are
-- most writes, can be HOT (no index maintenance).
CREATE TABLE IF NOT EXISTS scan_results (
    ip            inet        NOT NULL,
    port          integer     NOT NULL CHECK (port BETWEEN 0 AND 65535),
    service       text        NOT NULL CHECK (service <> ''),
    last_scanned  timestamptz NOT NULL,
    -- The response as text: invalid UTF-8 sequences and NUL bytes rendered as U+FFFD.
    response      text        NOT NULL,
    -- The exact response bytes, only where they differ from `response`.
    response_raw  bytea,
    -- Tie-breakers for equal `last_scanned`, and provenance.
    published_at  timestamptz NOT NULL,
    message_id    text        COLLATE "C" NOT NULL,
    -- When this row was last written (the writing transaction's start).
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ip, port, service)
) WITH (fillfactor = 80);

-- Messages that could not be stored, with the reason. The exact payload is kept
-- so nothing is lost and the message can be replayed once the cause is fixed.
CREATE TABLE IF NOT EXISTS dead_letters (
    message_id    text        PRIMARY KEY,
    -- A short snake_case code, e.g. invalid_json, invalid_ip, port_out_of_range.
    reason        text        NOT NULL,
    detail        text        NOT NULL,
    payload       bytea       NOT NULL,
    published_at  timestamptz,
    received_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS dead_letters_reason_idx ON dead_letters (reason, received_at);
