#!/bin/sh
# The sidecar's loop (docker-compose.yml): a snapshot every SNAPSHOT_INTERVAL seconds, then
# prune by PRUNE_RULES, then the metrics for node_exporter's textfile collector.
# Every command reads CHROMASNAP_DB and CHROMASNAP_STORE (set in the image).
set -u
interval="${SNAPSHOT_INTERVAL:-3600}"
rules="${PRUNE_RULES:---keep-hourly 24 --keep-daily 14 --keep-weekly 8 --keep-replaced 3}"
metrics="${METRICS_FILE:-/metrics/chromasnap.prom}"
trap 'exit 0' TERM INT   # PID 1 of a container: `docker stop` sends TERM

while :; do
    # takes the database write lock first: waits for an application's guarded write;
    # exit 2 until the server has created the database on a new volume
    if chromasnap snapshot --reason scheduled --tag sidecar; then
        # shellcheck disable=SC2086  # the rules are several options
        chromasnap prune $rules || echo "chromasnap-sidecar: prune failed (exit $?)" >&2
    else
        echo "chromasnap-sidecar: snapshot failed (exit $?)" >&2
    fi
    if [ -d "$(dirname "$metrics")" ]; then
        chromasnap stats --prometheus --output "$metrics" \
            || echo "chromasnap-sidecar: metrics failed (exit $?)" >&2
    fi
    sleep "$interval" &
    wait $!   # returns at once on TERM, which runs the trap
done
