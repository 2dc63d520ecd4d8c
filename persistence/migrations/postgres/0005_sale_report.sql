-- The sale report of issue 16, as views the back office can query, and that
-- `GET /admin/promotions/{id}/report` reads. PostgreSQL flavour: sums of BIGINT are NUMERIC
-- there, so they are cast back; a minute is `date_trunc` in UTC.

-- Orders, units and revenue (cents) per promotion and order status.
CREATE VIEW promotion_report AS
SELECT promotion_id,
       status,
       COUNT(*)                   AS orders,
       SUM(quantity)::BIGINT      AS units,
       SUM(amount_cents)::BIGINT  AS revenue_cents
FROM orders
GROUP BY promotion_id, status;

-- The funnel: tokens handed out, orders made, orders paid.
CREATE VIEW promotion_funnel AS
SELECT p.id AS promotion_id,
       (SELECT COALESCE(SUM(i.tokens_issued), 0)::BIGINT
          FROM promotion_items i WHERE i.promotion_id = p.id) AS tokens_issued,
       (SELECT COUNT(*) FROM orders o WHERE o.promotion_id = p.id) AS orders,
       (SELECT COUNT(*) FROM orders o
         WHERE o.promotion_id = p.id AND o.status = 'paid') AS paid_orders
FROM promotions p;

-- Orders made per minute of the sale (by `created_at`, UTC).
CREATE VIEW promotion_orders_per_minute AS
SELECT promotion_id,
       date_trunc('minute', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS minute,
       COUNT(*)              AS orders,
       SUM(quantity)::BIGINT AS units
FROM orders
GROUP BY promotion_id, date_trunc('minute', created_at AT TIME ZONE 'UTC');
