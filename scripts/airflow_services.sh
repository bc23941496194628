#!/usr/bin/env bash
# Real Airflow services for the demo and the end-to-end tests: scheduler, dag-processor, triggerer and
# api-server as separate processes (LocalExecutor on SQLite), the way a deployment runs them, not
# `airflow standalone` and not dag.test().
#
# All state lives under one folder ($NEOXFLOW_AIRFLOW_HOME, default <repo>/.state/airflow): airflow.db,
# logs/, run/<component>.pid, the shared JWT secret and api.env (the URL and admin login consumers read).
# Every component is started here with setsid and a pid file; `down` ends exactly those process groups
# (after checking the pid still runs the airflow component we started), never anything else.
#
#   scripts/airflow_services.sh up                 idempotent; waits until healthy and the DAGs are parsed
#   scripts/airflow_services.sh down
#   scripts/airflow_services.sh status             exit 0 only when every component runs and reports healthy
#   scripts/airflow_services.sh restart COMPONENT [seconds-down]   fault injection for tests
#   scripts/airflow_services.sh env                print the environment the components run with
#
# Connections and cluster settings come from the local cluster (<repo>/.state/cluster/env.sh, written by
# scripts/localcluster.sh up). Environment knobs: NEOXFLOW_API_PORT (default 18793; a busy port that is
# not ours moves to a free one), NEOXFLOW_AIRFLOW_PARALLELISM (4), NEOXFLOW_UNPAUSE (DAG ids to unpause
# once parsed, default pythia_pretrain; DAGs are paused at creation so the scheduled
# pythia_pretrain_continue never starts a run by itself here).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOME_DIR=${NEOXFLOW_AIRFLOW_HOME:-$REPO/.state/airflow}
VENV=${NEOXFLOW_VENV:-$REPO/.venv}
CLUSTER_ENV=${NEOXFLOW_STATE:-$REPO/.state/cluster}/env.sh
RUN=$HOME_DIR/run
LOG=$HOME_DIR/logs/services
COMPONENTS=(api-server scheduler dag-processor triggerer)
UNPAUSE=${NEOXFLOW_UNPAUSE:-pythia_pretrain}
HEALTH_TIMEOUT=${NEOXFLOW_SERVICES_TIMEOUT:-180}

log() { printf '[airflow-services] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- processes we own ---------------------------------------------------------------------------------
pid_of() { [[ -s $RUN/$1.pid ]] && tr -dc '0-9' <"$RUN/$1.pid"; }

alive() {  # component: the pid in its pid file still runs `airflow <component>`
  # (the api-server retitles itself "airflow api_server -- host:..."; setproctitle also clobbers
  # /proc/<pid>/environ, so the command line is all there is to check)
  local pid
  pid=$(pid_of "$1") || return 1
  [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qE -- "airflow (${1}|${1//-/_})( |$)"
}

stop_component() {  # component: TERM the leader, then the process group it leads (setsid: pgid == pid)
  local c=$1 pid i
  if alive "$c"; then
    pid=$(pid_of "$c")
    log "stopping $c (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 150); do alive "$c" || break; sleep 0.2; done
    # what is left of the group we created (executor workers, serve-logs, uvicorn workers); while a member
    # lives, no other process can be given this pid, so the group is still ours
    if pgrep -g "$pid" >/dev/null 2>&1; then
      kill -TERM -- "-$pid" 2>/dev/null || true
      for i in $(seq 1 25); do pgrep -g "$pid" >/dev/null 2>&1 || break; sleep 0.2; done
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$RUN/$c.pid"
}

# --- configuration ------------------------------------------------------------------------------------
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

choose_port() {
  local want=${NEOXFLOW_API_PORT:-18793} p
  if alive api-server && [[ -s $RUN/api.port ]]; then cat "$RUN/api.port"; return; fi
  if port_free "$want"; then echo "$want"; return; fi
  for p in $(seq $((want + 1)) $((want + 200))); do
    if port_free "$p"; then log "port $want is taken: the api-server uses $p"; echo "$p"; return; fi
  done
  die "no free port in $want..$((want + 200))"
}

load_env() {
  [[ -s $CLUSTER_ENV ]] || die "$CLUSTER_ENV missing: start the local cluster first (make cluster-up)"
  # a clean Airflow configuration: nothing inherited from the caller (a test process's AIRFLOW_HOME or
  # extra DAG bundles) leaks into the services; everything they use is set below
  local name
  for name in $(compgen -e); do
    case $name in AIRFLOW_HOME | AIRFLOW__* | AIRFLOW_CONN_* | AIRFLOW_VAR_*) unset "$name" ;; esac
  done
  # shellcheck disable=SC1090
  source "$CLUSTER_ENV"
  mkdir -p "$RUN" "$LOG"
  [[ -s $HOME_DIR/jwt_secret ]] || (umask 077; head -c 32 /dev/urandom | base64 >"$HOME_DIR/jwt_secret")
  [[ -s $HOME_DIR/api_secret ]] || (umask 077; head -c 32 /dev/urandom | base64 >"$HOME_DIR/api_secret")
  PORT=${PORT:-$(choose_port)}
  export AIRFLOW_HOME=$HOME_DIR
  export AIRFLOW__CORE__EXECUTOR=LocalExecutor
  export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$HOME_DIR/airflow.db"
  export AIRFLOW__CORE__PARALLELISM=${NEOXFLOW_AIRFLOW_PARALLELISM:-4}
  export AIRFLOW__CORE__LOAD_EXAMPLES=False
  export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=True
  export AIRFLOW__CORE__DAGS_FOLDER=$REPO/dags
  export AIRFLOW__CORE__PLUGINS_FOLDER=$REPO/plugins
  export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
  export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin
  export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=False
  export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$PORT/execution/"
  export AIRFLOW__API__BASE_URL="http://127.0.0.1:$PORT"
  export AIRFLOW__API__HOST=127.0.0.1
  export AIRFLOW__API__PORT=$PORT
  export AIRFLOW__API__WORKERS=1
  AIRFLOW__API_AUTH__JWT_SECRET=$(cat "$HOME_DIR/jwt_secret")
  AIRFLOW__API__SECRET_KEY=$(cat "$HOME_DIR/api_secret")
  export AIRFLOW__API_AUTH__JWT_SECRET AIRFLOW__API__SECRET_KEY
  export AIRFLOW__LOGGING__BASE_LOG_FOLDER=$HOME_DIR/logs
  # the log servers of the scheduler's workers and of the triggerer: ports tied to the api-server's, so
  # two service sets (make demo and the e2e tests) can run side by side
  export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=$((PORT + 100))
  export AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=$((PORT + 200))
  export AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK=True
  export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=${NEOXFLOW_DAG_REFRESH_S:-30}
  # fast local runs: the DAG reads these when it is parsed
  export NEOXFLOW_POLL_INTERVAL=${NEOXFLOW_POLL_INTERVAL:-2}
  export NEOXFLOW_RETRY_DELAY_S=${NEOXFLOW_RETRY_DELAY_S:-5}
  export NEOXFLOW_REPO=$REPO
  export PATH=$VENV/bin:$PATH
}

write_api_env() {
  local pw=$HOME_DIR/simple_auth_manager_passwords.json.generated
  cat >"$HOME_DIR/api.env.tmp" <<EOF
# Written by scripts/airflow_services.sh up: where the api-server listens and how to log in.
NEOXFLOW_API_URL=http://127.0.0.1:$PORT
NEOXFLOW_API_USER=admin
NEOXFLOW_API_PASSWORD_FILE=$pw
AIRFLOW_HOME=$HOME_DIR
EOF
  mv "$HOME_DIR/api.env.tmp" "$HOME_DIR/api.env"
}

# --- start and wait -----------------------------------------------------------------------------------
start_component() {
  local c=$1
  alive "$c" && return
  local args=("$c")
  [[ $c == api-server ]] && args+=(--host 127.0.0.1 --port "$PORT" --workers 1)
  log "starting $c"
  setsid "$VENV/bin/airflow" "${args[@]}" </dev/null >>"$LOG/$c.log" 2>&1 &
  echo $! >"$RUN/$c.pid"
}

health() { curl -fsS --max-time 5 "http://127.0.0.1:$PORT/api/v2/monitor/health"; }

all_healthy() {
  local body
  body=$(health 2>/dev/null) || return 1
  "$VENV/bin/python" - "$body" <<'PY'
import json, sys
h = json.loads(sys.argv[1])
bad = [k for k in ("metadatabase", "scheduler", "triggerer", "dag_processor")
       if (h.get(k) or {}).get("status") != "healthy"]
sys.exit(1 if bad else 0)
PY
}

wait_until() {  # description timeout command...
  local what=$1 t=$2; shift 2
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    for c in "${COMPONENTS[@]}"; do alive "$c" || die "$c exited while waiting for $what (log: $LOG/$c.log)"; done
    ((SECONDS < end)) || die "$what not reached in ${t}s (logs: $LOG)"
    sleep 1
  done
}

monotonic_trigger_ids() {
  # SQLite only (this dev setup): Airflow's trigger table has "id INTEGER PRIMARY KEY" without
  # AUTOINCREMENT, so SQLite hands out a deleted trigger's id again (max rowid + 1). The triggerer keeps
  # its running/cancelling bookkeeping by id: a cancel meant for a finished trigger then lands on its
  # successor with the same id, as "user action", and a trigger whose on_kill() scancels kills a healthy
  # training job (seen in tests/e2e after a triggerer restart). Postgres sequences never reuse ids; here
  # the table is rebuilt once with AUTOINCREMENT, while no component runs.
  "$VENV/bin/python" - "$HOME_DIR/airflow.db" <<'PY'
import re, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
(sql,) = db.execute("select sql from sqlite_master where type='table' and name='trigger'").fetchone()
if "AUTOINCREMENT" in sql.upper():
    sys.exit(0)
new = sql.replace('CREATE TABLE "trigger"', 'CREATE TABLE trigger_autoinc', 1)
new, n = re.subn(r"\bid INTEGER NOT NULL,", "id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,", new, count=1)
new, m = re.subn(r",\s*CONSTRAINT trigger_pkey PRIMARY KEY \(id\)", "", new, count=1)
if not (n and m):
    sys.exit(f"unexpected trigger table schema, left as it is:\n{sql}")
indexes = [r[0] for r in db.execute("select sql from sqlite_master where type='index' and tbl_name='trigger' and sql is not null")]
db.execute("PRAGMA foreign_keys=OFF")
db.execute("BEGIN")
db.execute(new)
db.execute('INSERT INTO trigger_autoinc SELECT * FROM "trigger"')
db.execute('DROP TABLE "trigger"')
db.execute('ALTER TABLE trigger_autoinc RENAME TO "trigger"')
for index in indexes:
    db.execute(index)
db.execute("COMMIT")
PY
}

dags_ready() {  # every DAG in $UNPAUSE is parsed (known to the API) and unpaused
  "$VENV/bin/python" "$REPO/scripts/airflow_rest.py" --env "$HOME_DIR/api.env" unpause $UNPAUSE
}

cmd_up() {
  load_env
  "$VENV/bin/airflow" db migrate >>"$LOG/db-migrate.log" 2>&1 || die "airflow db migrate failed ($LOG/db-migrate.log)"
  local c any=0
  for c in "${COMPONENTS[@]}"; do alive "$c" && any=1; done
  ((any)) || monotonic_trigger_ids || die "could not make trigger ids monotonic in $HOME_DIR/airflow.db"
  echo "$PORT" >"$RUN/api.port"
  write_api_env
  for c in "${COMPONENTS[@]}"; do start_component "$c"; done
  local t0=$SECONDS
  wait_until "healthy services" "$HEALTH_TIMEOUT" all_healthy
  wait_until "DAGs parsed ($UNPAUSE)" "$HEALTH_TIMEOUT" dags_ready
  log "up in $((SECONDS - t0))s: UI http://127.0.0.1:$PORT (user admin, password in" \
    "$HOME_DIR/simple_auth_manager_passwords.json.generated)"
}

cmd_down() {
  local c
  for c in scheduler triggerer dag-processor api-server; do stop_component "$c"; done
  log "down"
}

cmd_status() {
  local ok=0 c port
  for c in "${COMPONENTS[@]}"; do
    if alive "$c"; then printf '%-14s running (pid %s)\n' "$c" "$(pid_of "$c")"
    else printf '%-14s stopped\n' "$c"; ok=1; fi
  done
  port=$(cat "$RUN/api.port" 2>/dev/null || echo "${NEOXFLOW_API_PORT:-18793}")
  PORT=$port
  if body=$(health 2>/dev/null); then printf 'health         %s\n' "$body"; all_healthy || ok=1
  else printf 'health         no answer on http://127.0.0.1:%s\n' "$port"; ok=1; fi
  return $ok
}

cmd_restart() {  # component [seconds-down]
  local c=$1 down=${2:-0}
  [[ " ${COMPONENTS[*]} " == *" $c "* ]] || die "restart: unknown component $c (${COMPONENTS[*]})"
  load_env
  stop_component "$c"
  sleep "$down"
  start_component "$c"
  wait_until "healthy services after restarting $c" "$HEALTH_TIMEOUT" all_healthy
  log "$c restarted"
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  restart) shift; [[ $# -ge 1 ]] || die "usage: $0 restart COMPONENT [seconds-down]"; cmd_restart "$@" ;;
  env) load_env; env | grep -E '^(AIRFLOW_|AIRFLOW__|NEOXFLOW_|SLURM_CONF)' | grep -v -E 'SECRET|JWT|CONN_' | sort ;;
  *) echo "usage: $0 up | down | status | restart COMPONENT [seconds-down] | env" >&2; exit 2 ;;
esac
