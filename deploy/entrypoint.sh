#!/bin/sh
# Container entrypoint: run `vectordb ARGS` bound where the platform sends traffic.
#
# The port is the platform's: $PORT (Knative, Cloud Run), $FC_SERVER_PORT (Alibaba
# Function Compute custom runtimes; custom containers use the port set in the function's
# configuration), $AWS_LWA_PORT (the Lambda Web Adapter), else 8080. The host is 0.0.0.0
# so that traffic from outside the container arrives; set VECTORDB_HOST=127.0.0.1 where
# only a local proxy calls the server (the Lambda Web Adapter). VECTORDB_* set explicitly
# always win.
#
# `vectordb serve` refuses 0.0.0.0 unless the store holds API keys (vectordb keys create),
# a JWT key is set (VECTORDB_JWT_*) or VECTORDB_INSECURE=true (something in front controls
# access): the same rule as anywhere else (api/exposure.py).
set -eu
export VECTORDB_PORT="${VECTORDB_PORT:-${PORT:-${FC_SERVER_PORT:-${AWS_LWA_PORT:-8080}}}}"
export VECTORDB_HOST="${VECTORDB_HOST:-0.0.0.0}"
exec vectordb "$@"
