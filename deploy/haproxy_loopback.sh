#!/bin/sh
# HAProxy for Ray Serve's HA proxy ingress, with its stats and Prometheus listeners on
# 127.0.0.1.
#
# Ray Serve (2.60) starts HAProxy as `haproxy -db -f CONFIG [...]` and renders CONFIG with
# `frontend prometheus` on `bind :9101` and `listen stats` on `bind *:8404`: every
# interface, with no setting for the address. This wrapper (RAY_SERVE_HAPROXY_BINARY_PATH,
# see deploy/ray_serve.py) rebinds those two sections to 127.0.0.1, leaves Serve's own
# frontend (http_options.host) as it is, and runs the real binary, VECTORDB_HAPROXY_BINARY,
# with the same arguments.
set -eu
config=""
previous=""
for arg in "$@"; do
    if [ "$previous" = "-f" ]; then config="$arg"; fi
    previous="$arg"
done
if [ -n "$config" ] && [ -f "$config" ]; then
    awk '
        /^[^[:space:]]/ { internal = ($1 == "frontend" && $2 == "prometheus") || ($1 == "listen" && $2 == "stats") }
        internal && $1 == "bind" { sub(/bind[[:space:]]+[^[:space:]]*:/, "bind 127.0.0.1:") }
        { print }
    ' "$config" > "$config.loopback"
    mv "$config.loopback" "$config"
fi
exec "${VECTORDB_HAPROXY_BINARY:?the real haproxy binary}" "$@"
