// Package monitoring holds what an operator loads into Prometheus and
// Grafana to watch s2strust: the alert rules (alerts.yml, with their
// promtool unit tests in alerts_test.yml) and a Grafana dashboard
// (grafana-dashboard.json). Its Go test checks that every expression in
// them names a metric the controller or the agent exports.
package monitoring

import _ "embed"

// Alerts is alerts.yml, the Prometheus alert rules.
//
//go:embed alerts.yml
var Alerts []byte

// Dashboard is grafana-dashboard.json, the Grafana dashboard.
//
//go:embed grafana-dashboard.json
var Dashboard []byte
