package bench

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// pgbenchScripts are the pgbench scripts of the floor scenarios; the shell
// scripts next to them (floor.sh, claims_floor.sh) run the same files.
//
//go:embed pgbench/*.sql
var pgbenchScripts embed.FS

// errNoPgbench is returned when the pgbench binary cannot be found.
var errNoPgbench = errors.New("pgbench is not installed (Debian: apt-get install postgresql-client); the floor scenarios run the same SQL through it")

var tpsLine = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)

// derivedScripts are pgbench scripts made from another by replacing one
// statement: the same transaction with its job written another way.
var derivedScripts = map[string]struct{ from, old, new string }{
	// A bucket claim as the default path sends it: the expiry job is an
	// outbox_jobs row (kind, args and the scheduled time, as the outbox
	// writes a job with one) instead of River's row.
	"claim_buckets_outbox.sql": {
		from: "claim_buckets.sql",
		old: `INSERT INTO river_job (args, kind, max_attempts, priority, queue, state, scheduled_at)
  VALUES ('{"checkout_id": 1}', 'inventory.expire_checkout', 25, 1, 'inventory_checkout', 'scheduled', now() + interval '1 second') RETURNING id;`,
		new: `INSERT INTO outbox_jobs (kind, args, queue, priority, max_attempts, scheduled_at, metadata, options)
SELECT k, a::jsonb, q, p, m, s, md::jsonb, op::jsonb
  FROM unnest(ARRAY['inventory.expire_checkout'], ARRAY['{"checkout_id": 1}'], ARRAY[NULL]::text[], ARRAY[NULL]::int[],
              ARRAY[NULL]::int[], ARRAY[now() + interval '1 second'], ARRAY[NULL]::text[], ARRAY[NULL]::text[])
       AS r (k, a, q, p, m, s, md, op);`,
	},
}

// scriptBody is the text of a pgbench script of pgbench/ or of
// derivedScripts.
func scriptBody(script string) ([]byte, error) {
	d, ok := derivedScripts[script]
	if !ok {
		return pgbenchScripts.ReadFile("pgbench/" + script)
	}
	body, err := pgbenchScripts.ReadFile("pgbench/" + d.from)
	if err != nil {
		return nil, err
	}
	if !bytes.Contains(body, []byte(d.old)) {
		return nil, fmt.Errorf("pgbench script %s: %s no longer holds the statement it replaces", script, d.from)
	}
	return bytes.Replace(body, []byte(d.old), []byte(d.new), 1), nil
}

// pgbench runs script (a file of pgbench/) against env's schema with
// clients clients for d (at least one second), and returns its tps.
func pgbench(ctx context.Context, env *Env, script string, clients int, d time.Duration) (float64, error) {
	bin, err := exec.LookPath("pgbench")
	if err != nil {
		return 0, errNoPgbench
	}
	body, err := scriptBody(script)
	if err != nil {
		return 0, err
	}
	dir, err := os.MkdirTemp("", "aftercommit-pgbench-")
	if err != nil {
		return 0, err
	}
	defer func() { _ = os.RemoveAll(dir) }() // best effort: a temp dir left behind is harmless
	file := filepath.Join(dir, script)
	if err := os.WriteFile(file, body, 0o600); err != nil {
		return 0, err
	}
	// A run in which no transaction finished (a second on a machine
	// crushed by other work) measured nothing: it is run again for twice as
	// long. An aborted run (a claim's lock wait outlasting its lock_timeout
	// there) is run again as it was; if every try aborts, the last one's
	// rate is taken. Up to five retries.
	const retries = 5
	secs := max(1, int(d.Round(time.Second)/time.Second))
	for try := 0; ; try++ {
		cmd := exec.CommandContext(ctx, bin, "-n", "-M", "prepared", "-f", file,
			"-c", strconv.Itoa(clients), "-j", strconv.Itoa(min(clients, 2)), "-T", strconv.Itoa(secs), env.url)
		cmd.Env = append(os.Environ(), "PGOPTIONS=-c search_path="+env.Schema)
		out, err := cmd.CombinedOutput()
		if err != nil && strings.Contains(string(out), "Run was aborted") {
			if try < retries {
				continue // as it was: a longer run is likelier to abort
			}
			// Every try aborted: the last one's rate, though it stopped
			// early, is what this machine gave.
			if m := tpsLine.FindStringSubmatch(string(out)); m != nil {
				return strconv.ParseFloat(m[1], 64)
			}
		}
		if err != nil {
			return 0, fmt.Errorf("pgbench -f %s: %w: %s", script, err, lastLines(string(out), 3))
		}
		if m := tpsLine.FindStringSubmatch(string(out)); m != nil {
			return strconv.ParseFloat(m[1], 64)
		}
		if try == retries || !strings.Contains(string(out), "actually processed: 0") {
			return 0, fmt.Errorf("pgbench -f %s printed no tps after %d tries: %s", script, try+1, lastLines(string(out), 3))
		}
		secs *= 2
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}

// txFloorScenario: the transactions of tx_one_job in pgbench, with no Go
// at all: the ceiling of commits/s on this machine, and what one river_job
// row costs the server.
func txFloorScenario(Config) *Scenario {
	side := func(name, note, script string) Side {
		return Side{Name: name, Note: note, Run: func(ctx context.Context, env *Env) (Sample, error) {
			s := Sample{}
			for _, c := range []int{1, 8} {
				v, err := pgbench(ctx, env, script, c, env.Duration/2)
				if err != nil {
					return nil, err
				}
				s["tx/s @"+strconv.Itoa(c)] = v
			}
			return s, env.Truncate(ctx, "pings", "river_job")
		}}
	}
	return &Scenario{
		Name:    "tx_floor",
		Title:   "tx_one_job's transactions in pgbench: the server's own ceiling",
		Metrics: []Metric{{"tx/s @1", true}, {"tx/s @8", true}},
		Sides: []Side{
			side("pgbench_plain", "BEGIN; INSERT one row; COMMIT (pgbench/tx_plain.sql)", "tx_plain.sql"),
			side("pgbench_job", "the same + a minimal river_job INSERT pipelined with the COMMIT (pgbench/tx_job_pipelined.sql)", "tx_job_pipelined.sql"),
		},
	}
}

// claimsFloorScenario: inventory claims on one hot product in pgbench, 32
// clients: the single-row lock against 32 buckets, with no Go at all.
func claimsFloorScenario(Config) *Scenario {
	const reset = `
TRUNCATE inventory_claims, checkouts, product_buckets, products, river_job, outbox_jobs;
INSERT INTO products (sku, stock) VALUES ('ROW', 1000000000);
INSERT INTO products (sku, stock, claim_strategy) VALUES ('BKT', 1000000000 / 32 * 32, 'buckets');
INSERT INTO product_buckets (product_id, bucket, stock)
SELECT id, i, 1000000000 / 32 FROM products, generate_series(0, 31) i WHERE sku = 'BKT'`
	side := func(name, note, script string) Side {
		return Side{Name: name, Note: note, Run: func(ctx context.Context, env *Env) (Sample, error) {
			if _, err := env.Pool.Exec(ctx, reset); err != nil {
				return nil, err
			}
			if _, err := env.Pool.Exec(ctx, `VACUUM ANALYZE products, product_buckets`); err != nil {
				return nil, err
			}
			v, err := pgbench(ctx, env, script, 32, env.Duration)
			if err != nil {
				return nil, err
			}
			return Sample{"claims/s": v}, nil
		}}
	}
	return &Scenario{
		Name:    "claims_floor",
		Title:   "inventory claims on one hot product in pgbench, 32 clients: the server's own ceiling",
		Metrics: []Metric{{"claims/s", true}},
		Sides: []Side{
			side("pgbench_single_row", "lock the product row, count, insert (pgbench/claim_single_row.sql)", "claim_single_row.sql"),
			side("pgbench_buckets_32", "one statement taking a free bucket of 32, the expiry job's river_job row with the COMMIT (pgbench/claim_buckets.sql)", "claim_buckets.sql"),
			side("pgbench_buckets_32_outbox", "the same with the expiry job as an outbox_jobs row, as the default path writes it (claim_buckets.sql with that insert)", "claim_buckets_outbox.sql"),
		},
	}
}
