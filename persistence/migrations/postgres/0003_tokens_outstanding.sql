-- api.md's item stats: tokens unexpired and unused now, beside every token ever issued.

ALTER TABLE promotion_items ADD COLUMN tokens_outstanding BIGINT NOT NULL DEFAULT 0;
