-- job_lock_batch: the worker lock's releases and acquisitions of one
-- process, many in one statement (jobs' lock middleware sends what its
-- jobs ask for at the same moment as one batch, like a group commit). Item
-- i is a release when p_release[i] (of slot p_slot[i], if job p_job[i]
-- still holds it), else an acquisition of a slot of (p_ns[i], p_key[i])
-- among p_permits[i] for job p_job[i] of client p_client[i], for a lease of
-- p_lease_us[i] microseconds: the lowest free or expired slot of the key
-- (one read of its rows), taken by an INSERT … ON CONFLICT
-- that decides under the primary key's lock, tried again while it lost a
-- race for a slot that looked free. A mutex (1 permit) skips the read: the
-- INSERT alone decides.
--
-- Items run in (namespace, key, release first) order and take a key's
-- slots lowest first: every batch of every process takes the rows of
-- job_locks in one order, so two batches wait for each other instead of
-- deadlocking, and a release frees its slot for an acquisition of the same
-- key in the same batch. Returns one row per
-- acquisition: its ordinal in the arrays, the slot taken (NULL: all held)
-- and whether a slot looked free.
CREATE FUNCTION job_lock_batch(
    p_ns       text[],
    p_key      text[],
    p_permits  integer[],
    p_job      bigint[],
    p_client   text[],
    p_lease_us bigint[],
    p_release  boolean[],
    p_slot     integer[]
) RETURNS TABLE (ord integer, slot integer, saw_free boolean)
    LANGUAGE plpgsql
    SET search_path FROM CURRENT
AS $fn$
#variable_conflict use_column
DECLARE
    i        integer;
    try      integer;
    cand     integer;
    got      integer;
    held     integer[];
BEGIN
    FOR i IN SELECT x.ord FROM unnest(p_ns, p_key, p_release) WITH ORDINALITY AS x(ns, k, rel, ord)
              ORDER BY x.ns, x.k, x.rel DESC, x.ord LOOP
        IF p_release[i] THEN
            DELETE FROM job_locks l
             WHERE l.namespace = p_ns[i] AND l.lock_key = p_key[i] AND l.slot = p_slot[i] AND l.holder_job_id = p_job[i];
            CONTINUE;
        END IF;
        ord := i;
        slot := NULL;
        saw_free := false;
        FOR try IN 1 .. p_permits[i] LOOP
            IF p_permits[i] = 1 THEN
                -- A mutex: slot 0, free or expired, decided by the INSERT.
                cand := 0;
            ELSE
                -- The lowest slot not held (free, or held past its lease):
                -- one read of the key's rows (at most permits). Lowest,
                -- not random: a batch may take several slots of one key,
                -- and batches that take slots in one order wait for each
                -- other instead of deadlocking.
                SELECT coalesce(array_agg(l.slot) FILTER (WHERE l.expires_at >= now()), '{}') INTO held
                  FROM job_locks l WHERE l.namespace = p_ns[i] AND l.lock_key = p_key[i];
                IF cardinality(held) >= p_permits[i] THEN
                    EXIT;
                END IF;
                cand := 0;
                WHILE cand = ANY (held) LOOP
                    cand := cand + 1;
                END LOOP;
            END IF;
            got := NULL;
            INSERT INTO job_locks AS l (namespace, lock_key, slot, holder_job_id, holder_client, acquired_at, expires_at)
            VALUES (p_ns[i], p_key[i], cand, p_job[i], p_client[i], now(), now() + p_lease_us[i] * interval '1 microsecond')
            ON CONFLICT (namespace, lock_key, slot) DO UPDATE
               SET holder_job_id = excluded.holder_job_id,
                   holder_client = excluded.holder_client,
                   acquired_at   = excluded.acquired_at,
                   expires_at    = excluded.expires_at
             WHERE l.expires_at < now()
            RETURNING l.slot INTO got;
            IF got IS NOT NULL THEN
                slot := got;
                saw_free := true;
                EXIT;
            END IF;
            IF p_permits[i] = 1 THEN
                EXIT; -- held, and not expired
            END IF;
            saw_free := true; -- lost a race for a slot that looked free
        END LOOP;
        RETURN NEXT;
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION job_lock_batch(text[], text[], integer[], bigint[], text[], bigint[], boolean[], integer[]) IS
'Releases and takes worker-lock slots (job_locks) for many jobs in one statement, in (namespace, key) order; one row per acquisition: ordinal, slot (NULL: all held), whether a slot looked free. Used by jobs'' lock middleware.';

-- Executed through PUBLIC's default EXECUTE (aftercommit_role_grants names
-- no array types), with its caller's rights: the worker role's grants on
-- job_locks let it write.
