#!/usr/bin/env bash
# Creates every missing secret file of compose.yaml in this directory with a random value
# (never overwrites an existing one), then sets the permissions the containers need: files 0644
# (the services read them as non-root users), the directory 0700 (only its owner gets in).
#
# Needs bash, coreutils and openssl (for the two P-256 signing keys and the checkpoint JWKS).
# CUSTOS_SECRETS_DIR=<dir> writes into another directory (used by tests/tests/deploy_image.rs).
set -euo pipefail
cd "${CUSTOS_SECRETS_DIR:-$(dirname "${BASH_SOURCE[0]}")}"
umask 077

die() { printf 'secrets: %s\n' "$*" >&2; exit 1; }

rand_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

# True (and says so) when NAME exists: existing secrets are never replaced.
exists() {
  if [[ -e $1 ]]; then
    printf 'secrets: %s exists, kept\n' "$1" >&2
    chmod 0644 "$1"
    return 0
  fi
  return 1
}

# Moves NAME.tmp into place.
commit() {
  mv -f "$1.tmp" "$1"
  chmod 0644 "$1"
  printf 'secrets: %s created\n' "$1" >&2
}

create() { # NAME CONTENT
  exists "$1" && return 0
  printf '%s\n' "$2" >"$1.tmp"
  commit "$1"
}

# A PKCS#8 PEM P-256 private key, the format custos-ingest / custos-consent `keygen` write.
create_p256_key() { # NAME
  exists "$1" && return 0
  command -v openssl >/dev/null || die "$1: openssl is needed (or create it with \`custos-ingest keygen --out $1\`)"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.tmp" 2>/dev/null \
    || die "$1: openssl genpkey failed"
  commit "$1"
}

b64url() { base64 | tr -d '\n=' | tr '+/' '-_'; }

# The public JWKS of a P-256 key file, as `custos-ingest jwks --key-file KEY --kid KID` prints it.
create_jwks() { # NAME KEY_FILE KID
  exists "$1" && return 0
  command -v openssl >/dev/null || die "$1: openssl is needed (or run \`custos-ingest jwks --key-file $2 --kid $3\`)"
  local der x y
  # SubjectPublicKeyInfo of a P-256 key: 91 bytes ending with the point 04 || X || Y.
  der=$(openssl pkey -in "$2" -pubout -outform DER | od -An -tx1 -v | tr -d ' \n')
  [[ ${#der} -eq 182 && ${der:52:2} == 04 ]] || die "$2: not a P-256 key"
  x=$(printf '%s' "${der:54:64}" | xxd_r | b64url)
  y=$(printf '%s' "${der:118:64}" | xxd_r | b64url)
  printf '{\n  "keys": [\n    {\n      "kty": "EC",\n      "crv": "P-256",\n      "x": "%s",\n      "y": "%s",\n      "kid": "%s",\n      "alg": "ES256",\n      "use": "sig"\n    }\n  ]\n}\n' \
    "$x" "$y" "$3" >"$1.tmp"
  commit "$1"
}

# Hex digits on stdin -> bytes on stdout (bash printf only, no xxd needed).
xxd_r() {
  local hex i
  hex=$(cat)
  for ((i = 0; i < ${#hex}; i += 2)); do
    printf "\\x${hex:i:2}"
  done
}

create pseudonym_keys "k1=$(rand_hex 32)"
create consent_seal_keys "s1=$(rand_hex 32)"
for name in ch_admin_password ch_writer_password ch_reader_password ch_query_password ch_consent_password ch_alerts_password \
  keycloak_admin_password keycloak_query_client_secret keycloak_consent_client_secret keycloak_fhir_client_secret \
  keycloak_feed_client_secret keycloak_console_client_secret \
  keycloak_demo_user_password; do
  create "$name" "$(rand_hex 24)"
done
create ssf_receivers '[]'
create_p256_key ssf_signing_key
create_p256_key checkpoint_signing_key
create_jwks checkpoint_jwks checkpoint_signing_key custos-ck-1
chmod 0700 .
