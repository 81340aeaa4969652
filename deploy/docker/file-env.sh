#!/bin/bash
# file-env: turns file-based secrets into environment variables, then runs the real program.
#
#   FILE__<NAME>=<path> ... file-env.sh PROGRAM [ARGS...]
#
# For every environment variable FILE__<NAME>, exports <NAME> with the content of <path> (trailing
# newlines dropped) and removes FILE__<NAME>; then execs PROGRAM. Used because the programs read
# their passwords from environment variables while Docker hands secrets over as files under
# /run/secrets: the value then lives only in the process environment, never in the container's
# configuration (`docker inspect`) or in compose.yaml.
#
# Installed as /usr/local/bin/custos-entrypoint in the Custos image (Dockerfile) and bind-mounted
# into the ClickHouse and Keycloak containers by compose.yaml. Needs bash only (no coreutils).
set -euo pipefail

die() { printf 'file-env: %s\n' "$*" >&2; exit 64; }

(($# > 0)) || die "usage: FILE__NAME=/run/secrets/x file-env.sh PROGRAM [ARGS...]"

for ref in "${!FILE__@}"; do
  name=${ref#FILE__}
  path=${!ref}
  [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "$ref: '$name' is not a variable name"
  [[ -f $path && -r $path ]] || die "$ref: cannot read '$path' (is the secret file created and readable by uid $(id -u 2>/dev/null || echo '?')? see deploy/secrets/README.md)"
  value=$(<"$path")
  [[ -n $value ]] || die "$ref: '$path' is empty"
  [[ $value != REPLACE* ]] || die "$ref: '$path' still holds the example text; create the secret (deploy/secrets/README.md)"
  export "$name=$value"
  unset "$ref"
done
unset ref name path value

exec "$@"
