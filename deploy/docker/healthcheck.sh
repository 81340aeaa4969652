#!/bin/bash
# custos-healthcheck [PATH] [PORT]: exit 0 when GET http://127.0.0.1:PORT/PATH answers 200.
#
# The runtime image carries no curl or wget (fewer tools for an intruder, fewer CVEs to patch):
# this speaks just enough HTTP/1.1 over bash's /dev/tcp for a container healthcheck.
# Defaults: PATH /readyz, PORT from CUSTOS_INGEST_HTTP_ADDR (else 9464).
set -uo pipefail

path=${1:-/readyz}
addr=${CUSTOS_INGEST_HTTP_ADDR:-0.0.0.0:9464}
port=${2:-${addr##*:}}
[[ $port =~ ^[0-9]+$ ]] || { echo "custos-healthcheck: bad port '$port'" >&2; exit 2; }

exec 3<>"/dev/tcp/127.0.0.1/$port" || { echo "custos-healthcheck: nothing listens on 127.0.0.1:$port" >&2; exit 1; }
printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$path" "$port" >&3
IFS= read -r -t 5 status <&3 || { echo "custos-healthcheck: no answer from 127.0.0.1:$port$path" >&2; exit 1; }
status=${status%$'\r'}
exec 3>&-
if [[ $status =~ ^HTTP/1\.[01]\ 200 ]]; then
  exit 0
fi
echo "custos-healthcheck: $path answered '$status'" >&2
exit 1
