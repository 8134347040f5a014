-- A claim on an outbox row, separate from when it is due (a retry delay):
-- the relay that will publish a row holds it until lease_until, so no
-- other relay (PostgreSQL) and no sweep of its own publishes it meanwhile.
-- 0: unclaimed.
ALTER TABLE outbox ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;
