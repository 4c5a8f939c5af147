DELETE FROM aftercommit_role_grants
 WHERE on_object IN ('TABLE outbox_event_relay_lag', 'TABLE outbox_event_relays',
                     'FUNCTION outbox_event_next_id()', 'FUNCTION outbox_events_mark(bigint)');

DROP VIEW outbox_event_relay_lag;
DROP TABLE outbox_event_relays;
DROP FUNCTION outbox_events_mark(bigint);
ALTER TABLE outbox_events ALTER COLUMN id SET DEFAULT nextval('outbox_events_id_seq'::regclass);
DROP FUNCTION outbox_event_next_id();
ALTER TABLE outbox_events DROP COLUMN key;

SELECT aftercommit_apply_grants();
