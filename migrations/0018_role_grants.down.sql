-- Privileges already granted to registered roles stay as they are; revoke
-- them by hand if those roles should lose them.
DROP FUNCTION IF EXISTS aftercommit_apply_grants();
DROP TABLE IF EXISTS aftercommit_roles, aftercommit_role_grants;
