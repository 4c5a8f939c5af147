package bench

import (
	"errors"
	"fmt"
	"image/color"
	"os"

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

	img := vgimg.NewWith(vgimg.UseWH(chartWidth, chartHeight), vgimg.UseDPI(chartDPI))
	dc := draw.New(img)
	title := draw.TextStyle{Color: color.Black, Font: plot.DefaultFont, Handler: plot.DefaultTextHandler,
		XAlign: draw.XCenter, YAlign: draw.YTop}
	title.Font.Size = vg.Points(13)
	dc.FillText(title, vg.Point{X: chartWidth / 2, Y: chartHeight - vg.Points(6)},
		"aftercommit bench — growth: the shipped client as river_job grows")
	sub := title
	sub.Font.Size = vg.Points(10)
	dc.FillText(sub, vg.Point{X: chartWidth / 2, Y: chartHeight - vg.Points(24)},
		fmt.Sprintf("points: medians of %d rounds; bars: min–max", rounds))
	dc.Max.Y -= vg.Points(40)
	tiles := draw.Tiles{Rows: 2, Cols: 1, PadTop: vg.Points(4), PadBottom: vg.Points(4), PadLeft: vg.Points(6),
		PadRight: vg.Points(14), PadY: vg.Points(16)}
	canvases := plot.Align([][]*plot.Plot{{top}, {bottom}}, tiles, dc)
	top.Draw(canvases[0][0])
	bottom.Draw(canvases[1][0])

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
