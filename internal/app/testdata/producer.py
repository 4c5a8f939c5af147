"""A producer in another language: enqueue an aftercommit job from Python.

Usage: /usr/bin/python3 producer.py DSN MODE

DSN is a libpq connection string whose search_path names the schema
aftercommit's migrations ran in (for example
postgres://app@db/app?options=-c%20search_path%3Dpublic). MODE is one of:

  commit        insert a pings row and enqueue an aftercommit.ping job for it
                in ONE transaction, then COMMIT: the relay moves the job into
                river_job and a worker marks the ping.
  rollback      the same, then ROLLBACK: nothing exists, nothing is relayed.
  unknown-kind  commit a pings row, a job of a kind no worker registers and,
                after it, a good aftercommit.ping job for the row: the relay
                moves the bad outbox row to outbox_dead_jobs with the reason
                and the good one still becomes a job.
  bad-args      the same with an aftercommit.ping job whose ping_id is a
                string: dead too, the args do not decode for the kind.

Prints one JSON line: {"ping_id": ..., "outbox_id": ...} and, for the bad
modes, "good_outbox_id". Outbox ids are outbox_jobs rows, not river_job ids.
"""

import json
import sys

try:
    import psycopg
    from psycopg.types.json import Jsonb
except ImportError as err:  # never skip: say how to get it
    sys.exit(
        f"producer.py: psycopg 3 is not importable by {sys.executable} ({err}); "
        "install it with `apt-get install python3-psycopg`"
    )

MODES = ("commit", "rollback", "unknown-kind", "bad-args")


def enqueue(conn, kind, args):
    """One outbox row in conn's transaction; returns its outbox_jobs id."""
    return conn.execute(
        "SELECT aftercommit_enqueue(%s, %s)", (kind, Jsonb(args))
    ).fetchone()[0]


def main(argv):
    if len(argv) != 3 or argv[2] not in MODES:
        sys.exit(f"usage: {argv[0]} DSN {{{'|'.join(MODES)}}}")
    dsn, mode = argv[1], argv[2]

    # psycopg 3 opens a transaction on the first statement; nothing is
    # visible to the relay until conn.commit().
    with psycopg.connect(dsn) as conn:
        ping_id = conn.execute(
            "INSERT INTO pings (note) VALUES (%s) RETURNING id", (f"from python, {mode}",)
        ).fetchone()[0]

        kind, args = "aftercommit.ping", {"ping_id": ping_id}
        if mode == "unknown-kind":
            kind = "no.such.kind"
        elif mode == "bad-args":
            args = {"ping_id": "x"}

        out = {"ping_id": ping_id, "outbox_id": enqueue(conn, kind, args)}
        if mode in ("unknown-kind", "bad-args"):
            out["good_outbox_id"] = enqueue(conn, "aftercommit.ping", {"ping_id": ping_id})

        if mode == "rollback":
            conn.rollback()
        else:
            conn.commit()

    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv)
