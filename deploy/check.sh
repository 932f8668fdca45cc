#!/usr/bin/env bash
# Validates the operations assets in deploy/: Prometheus rules (syntax and unit tests), the
# Grafana dashboard (JSON, every query parses, every metric exists), and the systemd unit.
# Usage: deploy/check.sh [BINARY]   BINARY (default target/debug/rebilly-webhookd) stands in
# for /usr/local/bin/rebilly-webhookd, which `systemd-analyze verify` requires to exist.
set -euo pipefail
cd "$(dirname "$0")/.."

binary="$(realpath -m "${1:-target/debug/rebilly-webhookd}")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "-- metric names in deploy/ exist in src/telemetry.rs"
grep -rhoE 'rebilly_webhookd_[a-z_]+' deploy/prometheus deploy/grafana \
  | sed -E 's/_(bucket|sum|count)$//' | sort -u > "$work/used"
missing=0
while read -r name; do
  if ! grep -q "\"$name\"" src/telemetry.rs; then
    echo "unknown metric: $name" >&2
    missing=1
  fi
done < "$work/used"
[ "$missing" = 0 ]

echo "-- Grafana dashboard"
python3 - deploy/grafana/rebilly-webhookd.json "$work/dashboard.rules.yml" <<'PY'
import json, sys
dashboard = json.load(open(sys.argv[1]))
# Grafana's variables replaced by values a rule file accepts, so promtool parses each query.
replace = {"$__rate_interval": "5m", "$job": ".*", "$instance": ".*",
           "$mountpoint": "/var/lib/rebilly-webhookd"}
rules = []
for panel in dashboard["panels"]:
    for target in panel.get("targets", []):
        expr = target["expr"]
        for old, new in replace.items():
            expr = expr.replace(old, new)
        rules.append({"record": f"dashboard:panel{panel['id']}:{target['refId']}", "expr": expr})
json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
print(f"{len(dashboard['panels'])} panels, {len(rules)} queries")
PY

if command -v promtool >/dev/null; then
  promtool check rules "$work/dashboard.rules.yml" >/dev/null
  echo "-- promtool check config (which checks the rules it loads)"
  promtool check config deploy/prometheus/prometheus.example.yml
  echo "-- promtool test rules"
  (cd deploy/prometheus && promtool test rules rebilly-webhookd.rules.test.yml)
else
  echo "SKIPPED: promtool not found (Debian: apt-get install prometheus); rules not checked"
fi

if command -v systemd-analyze >/dev/null; then
  echo "-- systemd-analyze verify (ExecStart pointed at $binary)"
  [ -x "$binary" ] || { echo "no binary at $binary: build it first" >&2; exit 1; }
  sed "s#/usr/local/bin/rebilly-webhookd#$binary#g" \
    deploy/systemd/rebilly-webhookd.service > "$work/rebilly-webhookd.service"
  systemd-analyze verify "$work/rebilly-webhookd.service"
  # The threshold is in tenths of the printed exposure: fail above 2.0 (the unit rates 1.1).
  systemd-analyze security --offline=yes --threshold=20 "$work/rebilly-webhookd.service" \
    | tail -1
else
  echo "SKIPPED: systemd-analyze not found; the systemd unit was not verified"
fi
