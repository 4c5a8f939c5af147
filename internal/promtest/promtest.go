// Package promtest reads Prometheus metrics in tests the way a Prometheus
// server does: it parses the text exposition a /metrics handler serves,
// computes histogram_quantile over classic buckets with PromQL's own
// algorithm, and runs promtool's checks (promtool must be installed:
// Debian's prometheus package ships it; a missing promtool fails the test,
// it is never skipped).
package promtest

import (
	"bytes"
	"errors"
	"math"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Parse parses a text exposition (format 0.0.4) into its metric families,
// by name, failing t on a syntax error.
func Parse(t testing.TB, text string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("promtest: parsing the exposition: %v\n%s", err, text)
	}
	return families
}

// Series returns the metric of family name whose labels include every pair
// of labels, or nil.
func Series(families map[string]*dto.MetricFamily, name string, labels map[string]string) *dto.Metric {
	f := families[name]
	if f == nil {
		return nil
	}
	for _, m := range f.GetMetric() {
		if hasLabels(m, labels) {
			return m
		}
	}
	return nil
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, l := range m.GetLabel() {
		if v, ok := want[l.GetName()]; ok {
			if v != l.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}

// Bucket is one classic histogram bucket: the cumulative count of
// observations less than or equal to UpperBound (the le label).
type Bucket struct {
	UpperBound float64
	Count      float64
}

// Buckets returns the classic buckets of h with the +Inf bucket the text
// format writes last (its count is the sample count).
func Buckets(h *dto.Histogram) []Bucket {
	out := make([]Bucket, 0, len(h.GetBucket())+1)
	for _, b := range h.GetBucket() {
		out = append(out, Bucket{UpperBound: b.GetUpperBound(), Count: float64(b.GetCumulativeCount())})
	}
	if len(out) == 0 || !math.IsInf(out[len(out)-1].UpperBound, +1) {
		out = append(out, Bucket{UpperBound: math.Inf(+1), Count: float64(h.GetSampleCount())})
	}
	return out
}

// HistogramQuantile is PromQL's histogram_quantile(q, …) over one classic
// histogram's cumulative buckets, as Prometheus computes it (promql
// bucketQuantile): buckets sorted by upper bound, the last must be +Inf
// (else NaN); rank = q × count; the first bucket whose cumulative count
// reaches the rank holds the quantile, which is interpolated linearly
// between the bucket's lower bound (the previous upper bound, 0 for the
// first bucket when its upper bound is above 0) and its upper bound. A rank
// that falls in the +Inf bucket returns the highest finite upper bound.
// Counts that decrease are raised to the running maximum, as Prometheus
// does. NaN for no observations, fewer than two buckets or q NaN; −Inf for
// q < 0, +Inf for q > 1.
func HistogramQuantile(q float64, buckets []Bucket) float64 {
	switch {
	case math.IsNaN(q):
		return math.NaN()
	case q < 0:
		return math.Inf(-1)
	case q > 1:
		return math.Inf(+1)
	}
	bs := slices.Clone(buckets)
	slices.SortStableFunc(bs, func(a, b Bucket) int { return cmpFloat(a.UpperBound, b.UpperBound) })
	if len(bs) == 0 || !math.IsInf(bs[len(bs)-1].UpperBound, +1) {
		return math.NaN()
	}
	// Buckets of one upper bound (from several series) add up.
	merged := bs[:1]
	for _, b := range bs[1:] {
		if last := &merged[len(merged)-1]; b.UpperBound == last.UpperBound {
			last.Count += b.Count
			continue
		}
		merged = append(merged, b)
	}
	bs = merged
	for i := 1; i < len(bs); i++ {
		bs[i].Count = max(bs[i].Count, bs[i-1].Count)
	}
	if len(bs) < 2 {
		return math.NaN()
	}
	total := bs[len(bs)-1].Count
	if total == 0 {
		return math.NaN()
	}
	rank := q * total
	i := sort.Search(len(bs)-1, func(i int) bool { return bs[i].Count >= rank })
	if i == len(bs)-1 {
		return bs[len(bs)-2].UpperBound
	}
	if i == 0 && bs[0].UpperBound <= 0 {
		return bs[0].UpperBound
	}
	start, end, count := 0.0, bs[i].UpperBound, bs[i].Count
	if i > 0 {
		start = bs[i-1].UpperBound
		count -= bs[i-1].Count
		rank -= bs[i-1].Count
	}
	return start + (end-start)*(rank/count)
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return +1
	}
	return 0
}

// Promtool returns the path of promtool, failing t with how to install it
// when it is missing: the checks it runs are part of the suite, never
// skipped.
func Promtool(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtest: promtool is not installed (%v): install Debian's prometheus package "+
			"(apt-get install prometheus), which ships it; these checks are never skipped", err)
	}
	return p
}

// RunPromtool runs promtool with args and stdin, returning its combined
// output and whether it exited 0.
func RunPromtool(t testing.TB, stdin string, args ...string) (string, bool) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), Promtool(t), args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Fatalf("promtest: running promtool %s: %v", strings.Join(args, " "), err)
		}
	}
	return out.String(), err == nil
}

// CheckMetrics runs `promtool check metrics` on a text exposition and fails
// t on any problem or warning promtool reports.
func CheckMetrics(t testing.TB, text string) {
	t.Helper()
	out, ok := RunPromtool(t, text, "check", "metrics")
	if !ok || strings.TrimSpace(out) != "" {
		t.Fatalf("promtool check metrics found problems (exit ok=%v):\n%s", ok, out)
	}
}
