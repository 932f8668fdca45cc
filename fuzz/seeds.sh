#!/usr/bin/env bash
# Seeds the webhook_body corpus with the fixtures: every realistic delivery and every body
# the daemon must reject. The other targets take structured input and grow their own corpus.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p corpus/webhook_body
cp ../fixtures/deliveries/*.json ../fixtures/rejected/*.json corpus/webhook_body/
