-- Relaying outbox_events out of the database (outbox/natsrelay: to NATS
-- JetStream), exactly once and, for each key, in commit order.
--
-- key: what an event is about (outbox.Tx.PublishKey), e.g. a fundraiser's
-- id. Events of one key keep their order everywhere they are relayed; the
-- relay puts the key in the message's subject and in CloudEvents' subject.
ALTER TABLE outbox_events ADD COLUMN key text
    CHECK (key IS NULL OR (key <> '' AND octet_length(key) <= 255));

-- An event's id is its place in the relayed order. outbox.Tx writes its
-- events right before COMMIT, after every row lock the transaction takes,
-- so for two transactions that lock the same row the one that commits
-- first also takes the smaller ids: id order is commit order for each
-- key whose writers conflict.
--
-- A relay reads ids in order and must know when no transaction can still
-- commit an id below the ones it read. The id's default below assigns the
-- transaction's xid before it takes the id, so every transaction holding
-- an id up to the sequence's last value has an xid older than any xid
-- assigned after that value was read. outbox_events_mark(after) reads the
-- last value and, when it is above after (else the mark is NULL), then
-- assigns its own transaction an xid: the mark. Once a later snapshot's
-- xmin passes the mark, every transaction older than it has ended, and the
-- ids up to the value are settled: committed, or never will be.
--
-- (A snapshot's xmax is no such bound: it is one past the newest xid that
-- ended, and a transaction that took a newer xid and is still running is
-- in no snapshot's xip, so a later xmin can pass that xmax while it runs.)
CREATE FUNCTION outbox_event_next_id() RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path FROM CURRENT
AS $fn$
BEGIN
    PERFORM pg_current_xact_id();
    RETURN nextval('outbox_events_id_seq');
END
$fn$;

ALTER TABLE outbox_events ALTER COLUMN id SET DEFAULT outbox_event_next_id();

-- outbox_events_mark(after): the sequence's last value (0 before the first
-- event); when it is above after, an xid of the calling transaction taken
-- after it was read (mark_xid, else NULL); and the xmin of a snapshot taken
-- last, which settles earlier marks. Separate statements: the order is
-- what makes it correct. Call it in a transaction of its own (autocommit):
-- the mark must end before it can be passed.
CREATE FUNCTION outbox_events_mark(after bigint, OUT last_id bigint, OUT mark_xid xid8, OUT snap_xmin xid8)
    LANGUAGE plpgsql VOLATILE
    SET search_path FROM CURRENT
AS $fn$
BEGIN
    last_id := coalesce(pg_sequence_last_value('outbox_events_id_seq'::regclass), 0);
    IF last_id > after THEN
        -- The mark's commit needs no flush: only its end counts.
        PERFORM set_config('synchronous_commit', 'off', true);
        mark_xid := pg_current_xact_id();
    END IF;
    snap_xmin := pg_snapshot_xmin(pg_current_snapshot());
END
$fn$;

-- One row per relayed stream: the cursor (the last event id the broker
-- acknowledged, and the broker's sequence of it) and the lease of the one
-- relay process that may publish to the stream.
CREATE TABLE outbox_event_relays (
    stream      text        PRIMARY KEY CHECK (stream ~ '^[A-Za-z0-9_-]{1,255}$'),
    -- The topics this stream carries (NULL: all).
    topics      text[],
    last_id     bigint      NOT NULL DEFAULT 0 CHECK (last_id >= 0),
    last_seq    bigint      NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    owner       text,
    lease_until timestamptz,
    owner_since timestamptz,
    acked_at    timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE outbox_event_relays IS
'Relays of outbox_events to a broker (outbox/natsrelay): per stream, the last event id acknowledged, and the lease of the one active relay. The events pruner keeps events no relay has sent; DELETE a stream''s row to retire it.';

-- What each relay still has to send: events after its cursor (of its
-- topics), the oldest one's age, and who holds the lease.
CREATE VIEW outbox_event_relay_lag AS
SELECT r.stream,
       r.owner,
       r.lease_until,
       r.lease_until > now() AS active,
       r.last_id,
       r.last_seq,
       r.acked_at,
       p.pending,
       p.oldest_at AS oldest_pending_at,
       coalesce(extract(epoch FROM now() - p.oldest_at), 0)::double precision AS oldest_pending_seconds
  FROM outbox_event_relays AS r
  CROSS JOIN LATERAL (
        SELECT count(*) AS pending, min(e.created_at) AS oldest_at
          FROM outbox_events AS e
         WHERE e.id > r.last_id
           AND (r.topics IS NULL OR e.topic = ANY (r.topics))) AS p;

COMMENT ON VIEW outbox_event_relay_lag IS
'Per relayed stream: events committed but not yet acknowledged by the broker, and the oldest one''s age.';

INSERT INTO aftercommit_role_grants (role_kind, on_object, privileges) VALUES
    ('app', 'TABLE outbox_event_relay_lag', 'SELECT'),
    ('app', 'FUNCTION outbox_event_next_id()', 'EXECUTE'),
    ('worker', 'TABLE outbox_event_relay_lag', 'SELECT'),
    ('worker', 'TABLE outbox_event_relays', 'SELECT, INSERT, UPDATE'),
    ('worker', 'FUNCTION outbox_event_next_id()', 'EXECUTE'),
    ('worker', 'FUNCTION outbox_events_mark(bigint)', 'EXECUTE');

SELECT aftercommit_apply_grants();
