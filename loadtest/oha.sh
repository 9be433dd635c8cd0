#!/usr/bin/env bash
# oha against a running edge: loadtest/oha.sh URL KEY [connections] [duration]
# (oha: `cargo install oha --locked`). Single-event POSTs of loadtest/event.json.
set -euo pipefail
URL=${1:?edge URL, e.g. http://127.0.0.1:8080/v1/events}; KEY=${2:?SDK key}
exec oha --no-tui -c "${3:-64}" -z "${4:-10s}" -m POST -T application/json \
  -H "X-Api-Key: $KEY" -D "$(dirname "$0")/event.json" "$URL"
