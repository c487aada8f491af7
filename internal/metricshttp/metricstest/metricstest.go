// Package metricstest scrapes a metrics endpoint over HTTP and reads
// values from it, for tests that check what an operator's Prometheus
// would see.
package metricstest

import (
	"fmt"
	"net/http"
	"sort"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Scrape is one scrape's metric families by name.
type Scrape map[string]*dto.MetricFamily

// Get scrapes url in Prometheus's text format.
func Get(url string) (Scrape, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		return nil, fmt.Errorf("scrape %s: content type %q, want text/plain", url, ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parse scrape of %s: %w", url, err)
	}
	return fams, nil
}

// Value is the value of the series of name whose labels include labels
// (name=value pairs): a gauge's or counter's value, a histogram's sample
// count. ok is false when no series matches.
func (s Scrape) Value(name string, labels ...string) (v float64, ok bool) {
	for _, m := range s.Series(name, labels...) {
		switch {
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		case m.GetUntyped() != nil:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

// Sum adds the values of every series of name whose labels include labels.
func (s Scrape) Sum(name string, labels ...string) float64 {
	var sum float64
	for _, m := range s.Series(name, labels...) {
		switch {
		case m.GetGauge() != nil:
			sum += m.GetGauge().GetValue()
		case m.GetCounter() != nil:
			sum += m.GetCounter().GetValue()
		case m.GetHistogram() != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum
}

// Series are the series of name whose labels include labels.
func (s Scrape) Series(name string, labels ...string) []*dto.Metric {
	f := s[name]
	if f == nil {
		return nil
	}
	var out []*dto.Metric
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				match = false
			}
		}
		if match {
			out = append(out, m)
		}
	}
	return out
}

// Names lists the metric names of the scrape, sorted.
func (s Scrape) Names() []string {
	out := make([]string, 0, len(s))
	for n := range s {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
