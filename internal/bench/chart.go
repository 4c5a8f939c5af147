package bench

import (
	"errors"
	"fmt"
	"image/color"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// ErrNoGrowthResults is returned by WriteGrowthChart when the results hold
// no waiting side of the growth scenario to draw.
var ErrNoGrowthResults = errors.New("bench: no results of the growth scenario to chart")

// Colours and glyphs of the growth chart.
var (
	chartBlue = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	chartRed  = color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}
	// chartMarks draw the sides off the line; shift moves them right of
	// their size so that they do not hide the line's last point.
	chartMarks = map[string]struct {
		colour color.Color
		glyph  draw.GlyphDrawer
		shift  float64
	}{
		"scheduled_1m": {color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}, draw.TriangleGlyph{}, 1.25},
		"finished_1m":  {color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}, draw.RingGlyph{}, 1.55},
	}
)

// Size of the growth chart (960 × 840 pixels).
const (
	chartWidth  = 8 * vg.Inch
	chartHeight = 7 * vg.Inch
	chartDPI    = 120
)

// WriteGrowthChart draws the growth scenario's results as a PNG at path:
// throughput (top) and start latency (bottom: p99, and p50 of the waiting
// sides) against the number of jobs already in river_job, on a log scale.
// The waiting sides' medians are joined by a line, with the rounds' min–max
// as bars; the other sides (jobs scheduled for later, finished jobs) are
// marks just right of their size. The x axis shows the sizes at scale 1 whatever the
// run's scale (the run's table gives the real ones).
func WriteGrowthChart(path string, results []Result) error {
	byKey := map[[2]string]Result{}
	for _, r := range results {
		if r.Scenario == GrowthScenario {
			byKey[[2]string{r.Side, r.Metric}] = r
		}
	}
	var waiting, others []growthBacklog
	for _, b := range growthBacklogs {
		if _, ok := byKey[[2]string{b.side, growthThroughput}]; !ok {
			continue
		}
		if b.waiting() {
			waiting = append(waiting, b)
		} else {
			others = append(others, b)
		}
	}
	if len(waiting) == 0 {
		return ErrNoGrowthResults
	}
	rounds := len(byKey[[2]string{waiting[0].side, growthThroughput}].Values)
	series := func(sides []growthBacklog, metric string) medianBars {
		var m medianBars
		for _, b := range sides {
			if r, ok := byKey[[2]string{b.side, metric}]; ok {
				m.add(float64(b.nominal)*max(1, chartMarks[b.side].shift), r)
			}
		}
		return m
	}

	top := growthPanel("throughput: queued no-op jobs drained by 100 workers", "jobs/s")
	if err := addLine(top, "jobs waiting (in another queue)", chartBlue, series(waiting, growthThroughput)); err != nil {
		return err
	}
	bottom := growthPanel(fmt.Sprintf("start latency at %d jobs/s (attempted_at − created_at)", growthRate), "ms")
	if err := addLine(bottom, "p99, jobs waiting (in another queue)", chartRed, series(waiting, growthP99)); err != nil {
		return err
	}
	if err := addLine(bottom, "p50, jobs waiting (in another queue)", chartBlue, series(waiting, growthP50)); err != nil {
		return err
	}
	for _, b := range others {
		mark := chartMarks[b.side]
		label := b.label + " (drawn beside)"
		if err := addMarks(top, label, mark.colour, mark.glyph, series([]growthBacklog{b}, growthThroughput)); err != nil {
			return err
		}
		if err := addMarks(bottom, "p99, "+label, mark.colour, mark.glyph, series([]growthBacklog{b}, growthP99)); err != nil {
			return err
		}
	}
	bottom.X.Label.Text = "jobs already in river_job (log scale)"
	for _, p := range []*plot.Plot{top, bottom} {
		p.Y.Min = 0
		p.Y.Max *= 1.6 // room for the legend
	}

	return writeChart(path, "aftercommit bench — growth: the shipped client as river_job grows",
		fmt.Sprintf("points: medians of %d rounds; bars: min–max", rounds), chartHeight, top, bottom)
}

// writeChart draws panels one above the other under a title and a
// subtitle, as a PNG at path, chartWidth wide and height high.
func writeChart(path, heading, sub string, height vg.Length, panels ...*plot.Plot) error {
	img := vgimg.NewWith(vgimg.UseWH(chartWidth, height), vgimg.UseDPI(chartDPI))
	dc := draw.New(img)
	title := draw.TextStyle{Color: color.Black, Font: plot.DefaultFont, Handler: plot.DefaultTextHandler,
		XAlign: draw.XCenter, YAlign: draw.YTop}
	title.Font.Size = vg.Points(13)
	dc.FillText(title, vg.Point{X: chartWidth / 2, Y: height - vg.Points(6)}, heading)
	subtitle := title
	subtitle.Font.Size = vg.Points(10)
	dc.FillText(subtitle, vg.Point{X: chartWidth / 2, Y: height - vg.Points(24)}, sub)
	dc.Max.Y -= vg.Points(40)
	tiles := draw.Tiles{Rows: len(panels), Cols: 1, PadTop: vg.Points(4), PadBottom: vg.Points(4), PadLeft: vg.Points(6),
		PadRight: vg.Points(14), PadY: vg.Points(16)}
	grid := make([][]*plot.Plot, len(panels))
	for i, p := range panels {
		grid[i] = []*plot.Plot{p}
	}
	canvases := plot.Align(grid, tiles, dc)
	for i, p := range panels {
		p.Draw(canvases[i][0])
	}

	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("bench: writing the chart: %w", err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		_ = f.Close()
		return fmt.Errorf("bench: writing the chart: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("bench: writing the chart: %w", err)
	}
	return nil
}

// medianBars is a series of medians with their min–max over the rounds.
type medianBars struct {
	plotter.XYs
	plotter.YErrors
}

func (m *medianBars) add(x float64, r Result) {
	m.XYs = append(m.XYs, plotter.XY{X: x, Y: r.Median})
	m.YErrors = append(m.YErrors, struct{ Low, High float64 }{Low: r.Median - r.Min, High: r.Max - r.Median})
}

// growthPanel is one panel of the chart, its x axis the backlog's size.
func growthPanel(title, unit string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = unit
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.ConstantTicks{{Value: 1e4, Label: "10 k"}, {Value: 1e5, Label: "100 k"}, {Value: 1e6, Label: "1 M"}}
	p.X.Min, p.X.Max = 6e3, 2.2e6
	p.Add(plotter.NewGrid())
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.TextStyle.Font.Size = vg.Points(10)
	return p
}

// addLine draws m's medians joined by a line, with their min–max bars.
func addLine(p *plot.Plot, label string, colour color.Color, m medianBars) error {
	if len(m.XYs) == 0 {
		return nil
	}
	l, points, err := plotter.NewLinePoints(m.XYs)
	if err != nil {
		return err
	}
	l.Color, l.Width = colour, vg.Points(1.5)
	points.Color, points.Shape, points.Radius = colour, draw.CircleGlyph{}, vg.Points(3)
	bars, err := plotter.NewYErrorBars(m)
	if err != nil {
		return err
	}
	bars.Color = colour
	p.Add(l, points, bars)
	p.Legend.Add(label, l, points)
	return nil
}

// addMarks draws m's medians as glyphs, with their min–max bars.
func addMarks(p *plot.Plot, label string, colour color.Color, glyph draw.GlyphDrawer, m medianBars) error {
	if len(m.XYs) == 0 {
		return nil
	}
	s, err := plotter.NewScatter(m.XYs)
	if err != nil {
		return err
	}
	s.Color, s.Shape, s.Radius = colour, glyph, vg.Points(5)
	bars, err := plotter.NewYErrorBars(m)
	if err != nil {
		return err
	}
	bars.Color = colour
	p.Add(s, bars)
	p.Legend.Add(label, s)
	return nil
}

// ErrNoHoldbackResults is returned by WriteHoldbackChart for a report
// without samples.
var ErrNoHoldbackResults = errors.New("bench: no holdback samples to chart")

// holdbackLines are the colours and dashes of the holdback chart's lines:
// per stack, its held side and its clear side.
var holdbackLines = map[string]struct {
	colour color.Color
	dashes []vg.Length
}{
	HoldbackBare + "/held":  {chartRed, nil},
	HoldbackBare + "/clear": {chartBlue, nil},
	HoldbackFull + "/held":  {color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}, []vg.Length{vg.Points(6), vg.Points(3)}},
	HoldbackFull + "/clear": {color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}, []vg.Length{vg.Points(6), vg.Points(3)}},
}

// WriteHoldbackChart draws a holdback run as a PNG at path: jobs done per
// second, commit → start p99 (log scale) and river_job's dead tuples
// against the minutes since the start, a line per stack and side; grey
// lines mark the hold.
func WriteHoldbackChart(path string, r *HoldbackReport) error {
	if len(r.Stacks) == 0 || len(r.Stacks[0].Held.Samples) == 0 {
		return ErrNoHoldbackResults
	}
	panel := func(title, unit string) *plot.Plot {
		p := plot.New()
		p.Title.Text = title
		p.Y.Label.Text = unit
		p.Add(plotter.NewGrid())
		p.Legend.Top, p.Legend.Left = true, true
		p.Legend.TextStyle.Font.Size = vg.Points(9)
		return p
	}
	done := panel("jobs done per second", "jobs/s")
	p99 := panel("commit → start latency, p99 of each interval (log scale)", "ms")
	p99.Y.Scale, p99.Y.Tick.Marker = plot.LogScale{}, ticks125{}
	dead := panel("river_job: dead tuples (pg_stat_user_tables)", "tuples")
	dead.X.Label.Text = "minutes since the start"
	for _, st := range r.Stacks {
		for _, side := range []HoldbackSide{st.Held, st.Clear} {
			style := holdbackLines[st.Stack+"/"+side.Name]
			label := fmt.Sprintf("%s, %s", st.Stack, side.Name)
			for _, pl := range []struct {
				p     *plot.Plot
				value func(HoldbackSample) float64
			}{
				{done, func(s HoldbackSample) float64 { return s.Done }},
				{p99, func(s HoldbackSample) float64 { return max(s.P99, 0.1) }},
				{dead, func(s HoldbackSample) float64 { return float64(s.Dead["river_job"]) }},
			} {
				xys := make(plotter.XYs, len(side.Samples))
				for i, s := range side.Samples {
					xys[i] = plotter.XY{X: s.At.Minutes(), Y: pl.value(s)}
				}
				l, err := plotter.NewLine(xys)
				if err != nil {
					return err
				}
				l.Color, l.Width, l.Dashes = style.colour, vg.Points(1.5), style.dashes
				pl.p.Add(l)
				pl.p.Legend.Add(label, l)
			}
		}
	}
	st := r.Stacks[0]
	for _, p := range []*plot.Plot{done, p99, dead} {
		if p != p99 {
			p.Y.Min = 0
		}
		p.Y.Max *= 1.5 // room for the legend
		for _, at := range []time.Duration{st.HoldFrom, st.HoldTo} {
			l, err := plotter.NewLine(plotter.XYs{{X: at.Minutes(), Y: p.Y.Min}, {X: at.Minutes(), Y: p.Y.Max}})
			if err != nil {
				return err
			}
			l.Color, l.Dashes = color.Gray{Y: 0x80}, []vg.Length{vg.Points(2), vg.Points(2)}
			p.Add(l)
		}
	}
	server, _, _ := strings.Cut(r.Server, " (")
	sides := "held and clear sides at once, each in its own database"
	if r.Apart {
		sides = "the clear side, then the held side, each alone in its own database"
	}
	return writeChart(path, fmt.Sprintf("aftercommit bench --holdback: a snapshot held %s beside %d jobs/s", r.Hold, r.Rate),
		fmt.Sprintf("%s, autovacuum %s; %s; grey: the hold", server, r.Autovacuum, sides),
		chartHeight*3/2, done, p99, dead)
}

// ticks125 marks a log axis at 1, 2 and 5 times the powers of ten.
type ticks125 struct{}

// Ticks implements plot.Ticker.
func (ticks125) Ticks(lo, hi float64) []plot.Tick {
	var ticks []plot.Tick
	for p := math.Pow(10, math.Floor(math.Log10(lo))); p <= hi; p *= 10 {
		for _, m := range []float64{1, 2, 5} {
			if v := m * p; v >= lo && v <= hi {
				ticks = append(ticks, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'g', -1, 64)})
			}
		}
	}
	return ticks
}
