-- outbox_events: the domain events published with outbox.Tx.Publish, in the
-- transaction of the business rows they describe ("always publish"). Inside
-- aftercommit, subscriptions turn an event into jobs in that same commit;
-- outside it, any reader can follow the table with plain SQL.
--
-- txid is the publishing transaction (xid8). Ids are handed out before
-- commit, so a transaction that commits late can show a smaller id than
-- events already read; reading in (txid, id) order up to the oldest
-- transaction still running never skips one (the watermill-sql way):
--
--   SELECT id, txid, topic, payload, created_at
--     FROM outbox_events
--    WHERE (txid, id) > ($1::xid8, $2::bigint)             -- last (txid, id) read
--      AND txid < pg_snapshot_xmin(pg_current_snapshot())  -- only finished transactions
--    ORDER BY txid, id
--    LIMIT 1000;
--
-- Events older than the retention are pruned by the aftercommit.prune_events
-- periodic job.
CREATE TABLE outbox_events (
    id         bigserial   PRIMARY KEY,
    txid       xid8        NOT NULL DEFAULT pg_current_xact_id(),
    topic      text        NOT NULL CHECK (topic <> '' AND length(topic) <= 255),
    payload    jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX outbox_events_txid_id_idx ON outbox_events (txid, id);
CREATE INDEX outbox_events_topic_id_idx ON outbox_events (topic, id);
CREATE INDEX outbox_events_created_at_idx ON outbox_events (created_at);
