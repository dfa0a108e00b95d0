#!/bin/sh
# Runs once, when the postgres volume is first initialised, as the superuser:
# a login and a password for each of Tenantry's roles (the `roles` service,
# `tenantry-migrate roles`, gives them their rights) and, for Temporal, a role
# owning databases of its own. Passwords come from the postgres service's
# environment in compose.yaml; change them there (and in the URLs) for anything
# but a local trial.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE ROLE tenantry_migrator LOGIN PASSWORD '${MIGRATOR_PASSWORD}';
CREATE ROLE tenantry_worker LOGIN PASSWORD '${WORKER_PASSWORD}';
CREATE ROLE tenantry_api LOGIN PASSWORD '${API_PASSWORD}';
CREATE ROLE temporal LOGIN PASSWORD '${TEMPORAL_PASSWORD}';
CREATE DATABASE temporal OWNER temporal;
CREATE DATABASE temporal_visibility OWNER temporal;
SQL
