DELETE FROM aftercommit_role_grants
 WHERE on_object IN ('TABLE db_vacuum_holdback', 'TABLE db_table_health');

DROP VIEW db_table_health;
DROP VIEW db_vacuum_holdback;

SELECT aftercommit_apply_grants();
