// Command benchratio reads `go test -bench` output (several rounds, as from
// running the same benchmarks repeatedly) and prints, per benchmark, the
// median, min and max ns/op and the ratio of its median to its group's
// baseline: the first sub-benchmark of the group, measured in the same run.
// A group is a benchmark name without its last path element, so
// BenchmarkTx/conc=8/plain is the baseline of BenchmarkTx/conc=8/….
//
//	for i in 1 2 3 4 5 6; do go test -run '^$' -bench . ./outbox; done | go run ./internal/benchratio
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

var line = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+([\d.]+) ns/op`)

type series struct {
	name string
	ns   []float64
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "benchratio:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	var order []string
	byName := map[string]*series{}
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		m := line.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			return err
		}
		s, ok := byName[m[1]]
		if !ok {
			s = &series{name: m[1]}
			byName[m[1]] = s
			order = append(order, m[1])
		}
		s.ns = append(s.ns, v)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if len(order) == 0 {
		return fmt.Errorf("no benchmark lines on input")
	}

	baseline := map[string]*series{}
	// The table is this tool's whole output: a failed write is its failure.
	if _, err := fmt.Fprint(out, "| benchmark | runs | median µs/op | min | max | ratio to baseline |\n|---|---:|---:|---:|---:|---:|\n"); err != nil {
		return err
	}
	for _, name := range order {
		s := byName[name]
		group := name
		if i := strings.LastIndex(name, "/"); i >= 0 {
			group = name[:i]
		}
		base, ok := baseline[group]
		if !ok {
			base = s
			baseline[group] = s
		}
		ratio := "baseline"
		if base != s {
			ratio = fmt.Sprintf("%.2f", median(s.ns)/median(base.ns))
		}
		if _, err := fmt.Fprintf(out, "| %s | %d | %.0f | %.0f | %.0f | %s |\n", name, len(s.ns),
			median(s.ns)/1e3, slices.Min(s.ns)/1e3, slices.Max(s.ns)/1e3, ratio); err != nil {
			return err
		}
	}
	return nil
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
