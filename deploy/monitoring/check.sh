#!/usr/bin/env bash
# Checks the Prometheus files with promtool: the alert rules parse, the
# example configuration loads them, and the rules' unit tests pass (each
# alert fires on its failure, after its `for`, and not on a healthy
# fleet). Debian's prometheus package ships promtool; installed when absent.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v promtool >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
promtool --version | head -1
promtool check rules alerts.yml
promtool check config prometheus.yml
promtool test rules alerts_test.yml
