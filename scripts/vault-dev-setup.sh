#!/usr/bin/env bash
# Prepares the docker-compose Vault dev server for the broker:
#   - token policies the broker hands out (ops-read, ops-write),
#   - the broker's own policy (jit-broker) and an AppRole `jit-broker` to log in with,
#   - prints the role_id and writes a secret_id to dev/vault-secret-id (mode 600).
# Usage: docker compose up -d vault && scripts/vault-dev-setup.sh
# Then set providers.vault.auth.approle (see docs/providers/vault.md).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT_TOKEN="${VAULT_DEV_ROOT_TOKEN:-dev-root-token}"   # VAULT_DEV_ROOT_TOKEN_ID in docker-compose.yml

# Runs the vault CLI inside the compose container, as root, against the dev server.
v() { docker compose exec -T -e VAULT_ADDR=http://127.0.0.1:8200 -e VAULT_TOKEN="$ROOT_TOKEN" vault vault "$@"; }

until v status >/dev/null 2>&1; do echo "waiting for vault..."; sleep 1; done

v read sys/auth/approle >/dev/null 2>&1 || v auth enable approle

# Policies handed out by `token:` roles. The dev server mounts KV v2 at secret/.
v policy write ops-read - <<'HCL'
path "secret/data/ops/*" { capabilities = ["read"] }
HCL
v policy write ops-write - <<'HCL'
path "secret/data/ops/*" { capabilities = ["create", "update", "read"] }
HCL

# The broker's own policy (docs/providers/vault.md explains each line).
v policy write jit-broker - <<'HCL'
path "auth/token/create-orphan"   { capabilities = ["create", "update"] }
path "auth/token/revoke-accessor" { capabilities = ["update"] }
path "sys/leases/revoke"          { capabilities = ["update"] }
path "database/creds/*"           { capabilities = ["read"] }
path "auth/approle/role/jit-broker/custom-secret-id"            { capabilities = ["update"] }
path "auth/approle/role/jit-broker/secret-id/lookup"            { capabilities = ["update"] }
path "auth/approle/role/jit-broker/secret-id/destroy"           { capabilities = ["update"] }
path "auth/approle/role/jit-broker/secret-id-accessor/destroy"  { capabilities = ["update"] }
path "auth/approle/role/jit-broker/secret-id"                   { capabilities = ["update"] }
HCL

# A child token's policies must be a subset of the broker's, so the broker
# holds every policy a token role hands out.
v write auth/approle/role/jit-broker \
  token_policies="jit-broker,ops-read,ops-write" \
  token_ttl=20m token_max_ttl=1h secret_id_ttl=0 secret_id_num_uses=0 >/dev/null

ROLE_ID="$(v read -field=role_id auth/approle/role/jit-broker/role-id)"
mkdir -p dev
umask 077
v write -f -field=secret_id auth/approle/role/jit-broker/secret-id > dev/vault-secret-id

echo "role_id: ${ROLE_ID}"
echo "secret_id written to dev/vault-secret-id"
echo "config:  providers.vault.auth.approle: { roleId: ${ROLE_ID}, secretIdFile: dev/vault-secret-id, roleName: jit-broker }"
