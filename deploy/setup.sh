#!/bin/sh
# One-shot setup of the docker-compose stack (service `setup`), safe to run again:
# schema migrations, the configuration, and an admin key created once and kept in the `keys`
# volume (/keys/admin-key). Prints LEADSLA_ADMIN_KEY=... for `docker compose logs setup`.
# Needs LEADSLA_DATABASE_URL; SETUP_CONFIG and SETUP_KEYS_DIR override the two paths.
set -eu
config="${SETUP_CONFIG:-/deploy/compose-config.yaml}"
keys="${SETUP_KEYS_DIR:-/keys}"
leadsla migrate
leadsla config apply "$config"
if [ ! -s "$keys/admin-key" ]; then
  leadsla keys create --admin compose-admin > "$keys/admin-key.new"
  mv "$keys/admin-key.new" "$keys/admin-key"
fi
echo "LEADSLA_ADMIN_KEY=$(cat "$keys/admin-key")"
