-- The tables of api.md ("Orders in SQL") and the flusher's cursor. SQLite flavour:
-- timestamps are RFC 3339 text in UTC with milliseconds ("2026-11-11T00:00:00.000Z"), fixed
-- width, so they sort as text. `orders` is WITHOUT ROWID: clustered on its text key, one
-- b-tree fewer to write per row.

CREATE TABLE orders (
    order_id     TEXT PRIMARY KEY,
    promotion_id TEXT NOT NULL,
    sku          TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    quantity     INTEGER NOT NULL,
    price_cents  BIGINT NOT NULL,
    amount_cents BIGINT NOT NULL,
    status       TEXT NOT NULL
        CHECK (status IN ('pending_payment', 'paid', 'cancelled', 'expired')),
    created_at   TEXT NOT NULL,
    pay_before   TEXT NOT NULL,
    paid_at      TEXT NULL,
    payment_ref  TEXT NULL,
    closed_at    TEXT NULL,
    -- When the engine last changed the order (not when the flusher wrote it), so that a
    -- replayed batch writes the very same row.
    updated_at   TEXT NOT NULL
) WITHOUT ROWID;

-- The back office looks orders up by item and by shopper.
CREATE INDEX orders_promotion_sku ON orders (promotion_id, sku);
CREATE INDEX orders_user ON orders (user_id);

CREATE TABLE promotions (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    -- The window as it is now: start and stop move it.
    starts_at         TEXT NOT NULL,
    ends_at           TEXT NOT NULL,
    payment_timeout_s INTEGER NOT NULL,
    require_token     BOOLEAN NOT NULL,
    token_multiplier  INTEGER NOT NULL,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL
);

CREATE TABLE promotion_items (
    promotion_id   TEXT NOT NULL REFERENCES promotions (id),
    sku            TEXT NOT NULL,
    title          TEXT NOT NULL,
    price_cents    BIGINT NOT NULL,
    per_user_limit BIGINT NOT NULL,
    stock          BIGINT NOT NULL,
    remaining      BIGINT NOT NULL,
    reserved       BIGINT NOT NULL,
    sold           BIGINT NOT NULL,
    tokens_issued  BIGINT NOT NULL,
    -- When the flusher last copied the engine's stats.
    updated_at     TEXT NOT NULL,
    PRIMARY KEY (promotion_id, sku),
    CHECK (remaining + reserved + sold = stock)
);

-- One row: the highest journal sequence number whose events are in the tables above. It is
-- written in the same transaction as the rows, so rows and cursor never disagree.
CREATE TABLE flusher_cursor (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    seq        BIGINT NOT NULL CHECK (seq >= 0),
    updated_at TEXT NOT NULL
);

INSERT INTO flusher_cursor (id, seq, updated_at)
VALUES (1, 0, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
