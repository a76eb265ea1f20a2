#!/usr/bin/env bash
# Start an MLflow tracking server on loopback for continual runs and multiruns.
#
#   bash scripts/mlflow_server.sh sqlite   [PORT]   # store runs/server/mlflow.db
#   bash scripts/mlflow_server.sh postgres [PORT]   # PostgreSQL store (see below)
#
# Then: continual tracking.uri=http://127.0.0.1:PORT ...   (default PORT 5000)
# Artifacts are proxied by the server into runs/server/artifacts (--artifacts-destination), so jobs
# need no direct access to the artifact store.
#
# PostgreSQL: the backend URI comes from $CONTINUAL_PG_URI (e.g.
# postgresql://continual:secret@db-host:5432/mlflow). Without it, and with the Debian `postgresql`
# package installed, a private cluster is created in runs/server/pgdata on a Unix socket and a free
# port. The PostgreSQL driver comes from `pip install -e ".[postgres]"` (psycopg 3).
# Production: run the server on a host the jobs can reach (--host 0.0.0.0 behind a proxy with
# authentication), PostgreSQL as the backend store, and an object store (s3://, gs://, ...) as
# --artifacts-destination.
set -euo pipefail

backend="${1:-sqlite}"
port="${2:-5000}"
root="$(cd "$(dirname "$0")/.." && pwd)"
here="$root/runs/server"
mkdir -p "$here/artifacts"
python="${PYTHON:-$root/.venv/bin/python}"

case "$backend" in
  sqlite)
    store="sqlite:///$here/mlflow.db"
    ;;
  postgres)
    if [[ -n "${CONTINUAL_PG_URI:-}" ]]; then
      store="$CONTINUAL_PG_URI"
    else
      bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
      if [[ -z "$bin" ]]; then
        echo "error: no PostgreSQL found: set CONTINUAL_PG_URI or install the Debian package postgresql" >&2
        exit 2
      fi
      data="$here/pgdata"
      pg_port="${PG_PORT:-55432}"
      as=()  # PostgreSQL refuses to run as root: then the cluster belongs to the postgres user
      if [[ "$(id -u)" == 0 ]]; then as=(runuser -u postgres --); fi
      if [[ ! -f "$data/PG_VERSION" ]]; then
        mkdir -p "$data"
        if [[ ${#as[@]} -gt 0 ]]; then chown postgres "$data"; chmod o+x "$here"; fi
        "${as[@]}" "$bin/initdb" -D "$data" -U continual --auth=trust >/dev/null
      fi
      "${as[@]}" "$bin/pg_ctl" -D "$data" -o "-p $pg_port -k $data -c listen_addresses=''" -l "$data/postgres.log" \
        -w start >/dev/null
      "$bin/createdb" -h "$data" -p "$pg_port" -U continual mlflow 2>/dev/null || true
      store="postgresql://continual@/mlflow?host=$data&port=$pg_port"
      echo "PostgreSQL running from $data (stop: ${as[*]} $bin/pg_ctl -D $data stop)"
    fi
    "$python" -c "import psycopg" 2>/dev/null || {
      echo "error: the PostgreSQL driver is missing: pip install -e \".[postgres]\" (psycopg)" >&2; exit 2; }
    ;;
  *)
    echo "usage: bash scripts/mlflow_server.sh sqlite|postgres [PORT]" >&2
    exit 2
    ;;
esac

echo "MLflow server on http://127.0.0.1:$port (store $store); stop with Ctrl-C"
exec "$python" -m mlflow server --host 127.0.0.1 --port "$port" --workers 2 \
  --backend-store-uri "$store" --artifacts-destination "$here/artifacts"
