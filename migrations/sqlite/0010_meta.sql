-- SPEC 7.4: facts about the store itself, one row each. `secret_key_check`
-- holds a known text sealed with the store's secret key, so a dispatcher
-- started with another key refuses to start instead of failing on each
-- secret it cannot open.
CREATE TABLE store_meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
