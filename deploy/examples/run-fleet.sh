#!/usr/bin/env bash
# Runs the contoso topology as separate processes on this machine: one
# controller and five agents, each with its own certificate, state
# directory and HTTPS endpoint on loopback. It applies the topology, waits
# until every host has acked and every trust edge's probe passes, prints
# the status and the trust report, and stops everything.
#
#   bash deploy/examples/run-fleet.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-$(mktemp -d)}
mkdir -p "$work"
echo "working in $work"
go build -o "$work/bin/s2s-controller" ./controller
go build -o "$work/bin/s2s-agent" ./agent
ctl() { "$work/bin/s2s-controller" --data-dir "$work/controller" "$@"; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

"$work/bin/s2s-controller" serve --data-dir "$work/controller" --listen 127.0.0.1:0 >"$work/controller.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do [ -s "$work/controller/controller.addr" ] && break; sleep 0.1; done
addr=$(cat "$work/controller/controller.addr")
echo "controller on $addr"

# A lab token-issuer certificate: CN the default SIP domain, every SIP domain in the SAN.
printf 'lab-only-password' >"$work/oauth.pw"
ctl certs issue-token-issuer --cn contoso.com --san contoso.com,fabrikam.com --out "$work/oauth.pfx" --password-file "$work/oauth.pw"
ctl secret put oauth-2026 --pfx "$work/oauth.pfx" --password-file "$work/oauth.pw"

# host product:version endpoint-name port
hosts=(
  "fe01.contoso.com lync:2015 pool01.contoso.com 18441"
  "fe02.contoso.com lync:2015 pool01.contoso.com 18442"
  "ex01.contoso.com exchange:2019 autodiscover.contoso.com 18443"
  "ex02.contoso.com exchange:2019 autodiscover.contoso.com 18444"
  "sp01.contoso.com sharepoint:2019 sp.contoso.com 18445"
)
# Name resolution for the simulated hosts, as DNS would give it: every host,
# and each deployment's endpoint name on its first host.
resolve=()
for h in "${hosts[@]}"; do
  read -r host _ _ port <<<"$h"
  resolve+=(--resolve "$host=127.0.0.1:$port")
done
resolve+=(--resolve "pool01.contoso.com=127.0.0.1:18441" --resolve "autodiscover.contoso.com=127.0.0.1:18443" --resolve "sp.contoso.com=127.0.0.1:18445")

for h in "${hosts[@]}"; do
  read -r host product name port <<<"$h"
  dir="$work/agents/$host"
  ctl certs issue-agent --host "$host" --https-name "$name" --out "$dir" >/dev/null
  "$work/bin/s2s-agent" run --controller "$addr" --host "$host" \
    --ca "$dir/ca.crt" --cert "$dir/agent.crt" --key "$dir/agent.key" \
    --driver sim --sim-product "$product" --sim-dir "$work/sim" --state-dir "$dir/state" \
    --sim-listen "127.0.0.1:$port" --sim-tls-cert "$dir/https.crt" --sim-tls-key "$dir/https.key" \
    --metadata-ca "$dir/ca.crt" "${resolve[@]}" \
    --verify-interval 200ms --pending-timeout 3s --drift-interval 5s \
    >"$work/agent-$host.log" 2>&1 &
  pids+=($!)
done

ctl apply -f deploy/examples/contoso.yaml
for i in $(seq 1 150); do
  if ctl status --trust >/dev/null 2>&1; then break; fi
  sleep 0.2
done
ctl get hosts
ctl status --trust
