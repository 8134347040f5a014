-- SPEC 7.2: a server's labels, a JSON object of key -> value (at most 32
-- pairs, keys and values [A-Za-z0-9_.-]{1,63}), set only through the API.
ALTER TABLE servers ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
