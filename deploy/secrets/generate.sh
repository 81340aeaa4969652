#!/usr/bin/env bash
# Creates every missing secret file of compose.yaml in this directory with a random value
# (never overwrites an existing one), then sets the permissions the containers need: files 0644
# (the services read them as non-root users), the directory 0700 (only its owner gets in).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
umask 077

rand_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

create() { # NAME CONTENT
  if [[ -e $1 ]]; then
    printf 'secrets: %s exists, kept\n' "$1" >&2
  else
    printf '%s\n' "$2" >"$1.tmp" && mv -f "$1.tmp" "$1"
    printf 'secrets: %s created\n' "$1" >&2
  fi
  chmod 0644 "$1"
}

create pseudonym_keys "k1=$(rand_hex 32)"
for name in ch_admin_password ch_writer_password ch_reader_password \
  keycloak_admin_password keycloak_query_client_secret keycloak_demo_user_password; do
  create "$name" "$(rand_hex 24)"
done
chmod 0700 .
