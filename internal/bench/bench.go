// Package bench runs aftercommit's benchmark scenarios side by side: each
// scenario has a baseline and one or more candidates, run in one process on
// the same database, alternating baseline and candidates for several
// rounds, so that every figure is a ratio measured in the same run. It is
// `aftercommit bench`; BENCHMARKS.md holds the figures of the full run.
//
// Every scenario works in a scratch schema of its own (created, migrated
// and dropped by the run), on the server the Config's URL names.
package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Defaults of Config.
const (
	RoundsDefault   = 5
	DurationDefault = 3 * time.Second
	ScaleDefault    = 1.0
)

// ErrInvalidConfig is wrapped by Run's error for a Config out of range.
var ErrInvalidConfig = errors.New("bench: invalid config")

// Config tunes a run.
type Config struct {
	// DatabaseURL names the server; each scenario creates its own schema
	// there.
	DatabaseURL string
	// Scenarios to run, by name; nil runs all.
	Scenarios []string
	// Rounds is how many times each side runs, alternating with the others.
	Rounds int
	// Duration is how long a side that runs for a time (a steady load, a
	// loop of transactions) runs in each round.
	Duration time.Duration
	// Scale multiplies the sizes of the scenarios that work through a fixed
	// amount of jobs or rows (100,000 jobs at Scale 1).
	Scale float64
	// Out receives one line per measurement as the run goes. Nil: none.
	Out io.Writer
}

// Metric is one figure a side reports.
type Metric struct {
	// Name is the figure's name, such as "jobs/s" or "p99 ms".
	Name string
	// HigherIsBetter says which way is better, for the ratio's reading.
	HigherIsBetter bool
}

// Sample is what one round of one side measured: a value per metric.
type Sample map[string]float64

// Side is a way of doing a scenario's work: its baseline or a candidate.
type Side struct {
	// Name identifies the side in the scenario, such as "bare_river".
	Name string
	// Note says what the side does, for the table.
	Note string
	// Run does the work once and measures it.
	Run func(ctx context.Context, env *Env) (Sample, error)
}

// Scenario is one comparison: a baseline and candidates measured the same
// way.
type Scenario struct {
	// Name identifies the scenario (--scenario).
	Name string
	// Title says what is compared.
	Title string
	// Metrics are the figures every side reports; the first one is the
	// main one.
	Metrics []Metric
	// Setup prepares env once before the rounds (tables, jobs, workers).
	Setup func(ctx context.Context, env *Env) error
	// Sides are the baseline, first, then the candidates.
	Sides []Side
	// Goals are what the figures should reach.
	Goals []Goal
}

// Goal is a target for one side's median of one metric: a ratio to the
// baseline's median, or an absolute value.
type Goal struct {
	// Side is the side the goal is about.
	Side string
	// Metric is the metric (default: the scenario's main one).
	Metric string
	// AtMost or AtLeast bounds the ratio side/baseline (or the value
	// itself when Absolute); 0 leaves that side open.
	AtMost, AtLeast float64
	// Absolute compares the median itself, not its ratio.
	Absolute bool
	// Text says the goal in words.
	Text string
}

// Result is one side's figures over the rounds.
type Result struct {
	Scenario string `json:"scenario"`
	Side     string `json:"side"`
	Note     string `json:"note"`
	Metric   string `json:"metric"`
	// Median, Min, Max are over the rounds.
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	Values []float64 `json:"values"`
	// Ratio is Median over the baseline's median (1 for the baseline).
	Ratio float64 `json:"ratio"`
	// Baseline says whether this is the scenario's baseline.
	Baseline bool `json:"baseline"`
	// Goal, when the scenario has one for this side and metric, says it
	// and whether this run met it.
	Goal   string `json:"goal,omitempty"`
	GoalOK *bool  `json:"goal_ok,omitempty"`
}

// Report is a whole run.
type Report struct {
	// RunID names the run; its scratch schemas end with it.
	RunID    string    `json:"run_id"`
	Started  time.Time `json:"started"`
	Took     string    `json:"took"`
	Rounds   int       `json:"rounds"`
	Duration string    `json:"duration"`
	Scale    float64   `json:"scale"`
	Server   string    `json:"server"`
	Results  []Result  `json:"results"`
}

// Names lists the scenarios Run knows, in order.
func Names() []string {
	out := make([]string, 0, len(registry))
	for _, s := range registry {
		out = append(out, s(Config{Scale: 1}).Name)
	}
	return out
}

// registry holds every scenario, built for a Config.
var registry = []func(Config) *Scenario{
	txOneJobScenario,
	txFloorScenario,
	txBulkScenario,
	bulkInsertScenario,
	workerThroughputScenario,
	latencyScenario,
	donationsScenario,
	donateHotScenario,
	claimsScenario,
	claimsFloorScenario,
	carUsersScenario,
	processesScenario,
	growthScenario,
}

// withDefaults fills the zero fields of cfg.
func withDefaults(cfg Config) Config {
	if cfg.Rounds == 0 {
		cfg.Rounds = RoundsDefault
	}
	if cfg.Duration == 0 {
		cfg.Duration = DurationDefault
	}
	if cfg.Scale == 0 {
		cfg.Scale = ScaleDefault
	}
	return cfg
}

// Validate reports a Config out of range (after its defaults), wrapping
// ErrInvalidConfig.
func Validate(cfg Config) error {
	cfg = withDefaults(cfg)
	switch {
	case cfg.Rounds < 1 || cfg.Rounds > 100:
		return fmt.Errorf("%w: --rounds must be in 1…100, got %d", ErrInvalidConfig, cfg.Rounds)
	case cfg.Duration < 10*time.Millisecond:
		return fmt.Errorf("%w: --duration must be at least 10ms, got %s", ErrInvalidConfig, cfg.Duration)
	case !(cfg.Scale > 0 && cfg.Scale <= 100):
		return fmt.Errorf("%w: --scale must be in (0, 100], got %g", ErrInvalidConfig, cfg.Scale)
	}
	for _, name := range cfg.Scenarios {
		if !slices.Contains(Names(), name) {
			return fmt.Errorf("%w: unknown scenario %q: want one of %s", ErrInvalidConfig, name, strings.Join(Names(), ", "))
		}
	}
	return nil
}

// Run runs the scenarios of cfg and returns their results. A scenario that
// fails stops the run.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg = withDefaults(cfg)
	if err := Validate(cfg); err != nil {
		return nil, err
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	var scenarios []*Scenario
	for _, build := range registry {
		s := build(cfg)
		if cfg.Scenarios == nil || slices.Contains(cfg.Scenarios, s.Name) {
			scenarios = append(scenarios, s)
		}
	}

	report := &Report{RunID: newRunID(), Started: time.Now(), Rounds: cfg.Rounds, Duration: cfg.Duration.String(), Scale: cfg.Scale}
	for _, s := range scenarios {
		results, server, err := runScenario(ctx, cfg, report.RunID, s)
		if err != nil {
			return nil, fmt.Errorf("bench: %s: %w", s.Name, err)
		}
		report.Server = server
		report.Results = append(report.Results, results...)
	}
	report.Took = time.Since(report.Started).Round(time.Second).String()
	return report, nil
}

// runScenario sets the scenario up in a scratch schema and runs its sides
// round-robin.
func runScenario(ctx context.Context, cfg Config, runID string, s *Scenario) ([]Result, string, error) {
	env, err := newEnv(ctx, cfg, runID, s.Name)
	if err != nil {
		return nil, "", err
	}
	defer env.close(ctx)
	if s.Setup != nil {
		if err := s.Setup(ctx, env); err != nil {
			return nil, "", fmt.Errorf("setup: %w", err)
		}
	}
	samples := make([][]Sample, len(s.Sides))
	for round := range cfg.Rounds {
		for i, side := range s.Sides {
			if err := ctx.Err(); err != nil {
				return nil, "", context.Cause(ctx)
			}
			sample, err := side.Run(ctx, env)
			if err != nil {
				return nil, "", fmt.Errorf("%s, round %d: %w", side.Name, round+1, err)
			}
			samples[i] = append(samples[i], sample)
			_, _ = fmt.Fprintf(cfg.Out, "%s/%s round %d: %s\n", s.Name, side.Name, round+1, formatSample(s.Metrics, sample))
		}
	}

	var out []Result
	for _, m := range s.Metrics {
		var base float64
		for i, side := range s.Sides {
			values := make([]float64, len(samples[i]))
			for r, sample := range samples[i] {
				v, ok := sample[m.Name]
				if !ok {
					return nil, "", fmt.Errorf("%s reported no %q", side.Name, m.Name)
				}
				values[r] = v
			}
			res := Result{Scenario: s.Name, Side: side.Name, Note: side.Note, Metric: m.Name, Values: values, Baseline: i == 0}
			res.Median, res.Min, res.Max = median(values), slices.Min(values), slices.Max(values)
			if i == 0 {
				base = res.Median
			}
			res.Ratio = ratio(res.Median, base)
			for _, g := range s.Goals {
				if g.Side != side.Name || cmp.Or(g.Metric, s.Metrics[0].Name) != m.Name {
					continue
				}
				v := res.Ratio
				if g.Absolute {
					v = res.Median
				}
				ok := (g.AtMost == 0 || v <= g.AtMost) && (g.AtLeast == 0 || v >= g.AtLeast)
				res.Goal, res.GoalOK = g.Text, &ok
			}
			out = append(out, res)
		}
	}
	return out, env.server, nil
}

// ratio is v over base, 0 when base is 0 (nothing to compare with).
func ratio(v, base float64) float64 {
	if base == 0 {
		return 0
	}
	return v / base
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func formatSample(metrics []Metric, s Sample) string {
	parts := make([]string, 0, len(metrics))
	for _, m := range metrics {
		parts = append(parts, m.Name+" "+formatValue(s[m.Name]))
	}
	return strings.Join(parts, ", ")
}

func formatValue(v float64) string {
	switch {
	case math.IsNaN(v):
		return "-"
	case math.Abs(v) >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case math.Abs(v) >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

// Print writes the report as one table per scenario and metric.
func (r *Report) Print(w io.Writer) {
	_, _ = fmt.Fprintf(w, "aftercommit bench: %d rounds, %s per timed side, scale %g, %s; took %s\n",
		r.Rounds, r.Duration, r.Scale, r.Server, r.Took)
	var last string
	var tw *tabwriter.Writer
	for _, res := range r.Results {
		key := res.Scenario + "\x00" + res.Metric
		if key != last {
			if tw != nil {
				_ = tw.Flush()
			}
			_, _ = fmt.Fprintf(w, "\n%s — %s\n", res.Scenario, res.Metric)
			tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			_, _ = fmt.Fprintln(tw, "  SIDE\tMEDIAN\tMIN\tMAX\tRATIO\tGOAL\tNOTE")
			last = key
		}
		ratio := formatValue(res.Ratio)
		if res.Baseline {
			ratio = "baseline"
		}
		goal := ""
		if res.GoalOK != nil {
			goal = "met"
			if !*res.GoalOK {
				goal = "NOT met"
			}
			goal += " (" + res.Goal + ")"
		}
		_, _ = fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\n", res.Side, formatValue(res.Median), formatValue(res.Min),
			formatValue(res.Max), ratio, goal, res.Note)
	}
	if tw != nil {
		_ = tw.Flush()
	}
}
