#!/usr/bin/env bash
# Real Airflow services for the demo and the end-to-end tests: scheduler(s), dag-processor, triggerer(s)
# and api-server as separate processes (LocalExecutor) on a PostgreSQL metadata database, the way a
# deployment runs them, not `airflow standalone` and not dag.test().
#
# All Airflow state lives under one folder ($NEOXFLOW_AIRFLOW_HOME, default <repo>/.state/airflow): logs/,
# run/<component>.pid, the shared JWT secret, the database password (db.password, mode 600) and api.env
# (the URL and admin login consumers read). Every component runs under a supervisor (this script's
# `supervise`: it starts the component again when it exits by itself, as systemd would), started with setsid
# and a pid file; `down` ends exactly those process groups (after checking the pid still runs the supervisor
# we started), never anything else.
#
# PostgreSQL: a private server per Airflow home, started and stopped by this script (never Debian's
# system cluster or its service). initdb refuses to run as root and the server's user must reach its data
# directory (a clone under a mode-700 home is not reachable by another user), so when run as root the
# server runs as the `postgres` user (created by Debian's postgresql package) on a data directory it owns
# outside the repo: /var/lib/neoxflow/postgres/<12 hex digits of sha256 of the Airflow home's path>; run as
# another user, the server runs as that user in <Airflow home>/postgres. It listens on 127.0.0.1 only, on
# a free port near the api-server's (API port + 400), with its unix socket inside the data directory; the
# role `airflow` gets a random password (scram-sha-256), kept in <Airflow home>/db.password. An Airflow
# home without db.password (a new or wiped one) gets a new, empty database: a data directory left over
# for it is removed first. `down` leaves the data; overrides: NEOXFLOW_PG_DATA, NEOXFLOW_PG_USER,
# NEOXFLOW_PG_BIN (the folder with initdb and pg_ctl).
#
#   scripts/airflow_services.sh up                 idempotent; waits until healthy and the DAGs are parsed
#   scripts/airflow_services.sh down               Airflow components first, then PostgreSQL
#   scripts/airflow_services.sh status             exit 0 only when every component runs and reports healthy
#   scripts/airflow_services.sh restart COMPONENT [seconds-down]   fault injection for tests
#   scripts/airflow_services.sh kill COMPONENT     fault injection: SIGKILL its process group, supervisor
#                                                  included (a lost machine: it does not come back)
#   scripts/airflow_services.sh env                print the environment the components run with
#
# Connections and cluster settings come from the local cluster (<repo>/.state/cluster/env.sh, written by
# scripts/localcluster.sh up). Environment knobs: NEOXFLOW_API_PORT (default 18793; a busy port that is
# not ours moves to a free one), NEOXFLOW_AIRFLOW_PARALLELISM (4), NEOXFLOW_SCHEDULERS and
# NEOXFLOW_TRIGGERERS (1 each; N > 1 adds components scheduler-2..N and triggerer-2..N, which Airflow
# runs side by side on PostgreSQL), NEOXFLOW_UNPAUSE (DAG ids to unpause once parsed, default
# pythia_pretrain; DAGs are paused at creation so the scheduled pythia_pretrain_continue never starts a
# run by itself here).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOME_DIR=$(realpath -m "${NEOXFLOW_AIRFLOW_HOME:-$REPO/.state/airflow}")
VENV=${NEOXFLOW_VENV:-$REPO/.venv}
CLUSTER_ENV=${NEOXFLOW_STATE:-$REPO/.state/cluster}/env.sh
RUN=$HOME_DIR/run
LOG=$HOME_DIR/logs/services
UNPAUSE=${NEOXFLOW_UNPAUSE:-pythia_pretrain}
HEALTH_TIMEOUT=${NEOXFLOW_SERVICES_TIMEOUT:-180}

log() { printf '[airflow-services] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

instances() {  # base count: base, base-2, ..., base-count
  local i
  echo "$1"
  for ((i = 2; i <= $2; i++)); do echo "$1-$i"; done
}
[[ ${NEOXFLOW_SCHEDULERS:-1} =~ ^[1-9]$ ]] || die "NEOXFLOW_SCHEDULERS must be 1..9"
[[ ${NEOXFLOW_TRIGGERERS:-1} =~ ^[1-9]$ ]] || die "NEOXFLOW_TRIGGERERS must be 1..9"
mapfile -t COMPONENTS < <(echo api-server; instances scheduler "${NEOXFLOW_SCHEDULERS:-1}"
  echo dag-processor; instances triggerer "${NEOXFLOW_TRIGGERERS:-1}")

command_of() {  # component -> the airflow command it runs (scheduler-2 runs `airflow scheduler`)
  [[ $1 =~ ^(.*)-([0-9]+)$ ]] && { echo "${BASH_REMATCH[1]}"; return; }
  echo "$1"
}
instance_of() {  # component -> 1 for scheduler, 2 for scheduler-2
  [[ $1 =~ -([0-9]+)$ ]] && { echo "${BASH_REMATCH[1]}"; return; }
  echo 1
}

# --- PostgreSQL: where it lives, who runs it ------------------------------------------------------------
pg_bin_dir() {
  local d
  if [[ -n ${NEOXFLOW_PG_BIN:-} ]]; then echo "$NEOXFLOW_PG_BIN"; return; fi
  # Debian installs each major version in /usr/lib/postgresql/<major>/bin (not on PATH): take the newest
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [[ -z $d ]] && command -v pg_config >/dev/null && d=$(pg_config --bindir)
  echo "$d"
}
PG_BIN=$(pg_bin_dir)
if ((EUID == 0)); then
  PG_USER=${NEOXFLOW_PG_USER:-postgres}
  PG_DATA=${NEOXFLOW_PG_DATA:-/var/lib/neoxflow/postgres/$(printf '%s' "$HOME_DIR" | sha256sum | cut -c1-12)}
else
  PG_USER=$(id -un)
  PG_DATA=${NEOXFLOW_PG_DATA:-$HOME_DIR/postgres}
fi
PG_DATA=$(realpath -m "$PG_DATA")
PG_PASSWORD_FILE=$HOME_DIR/db.password

as_pg() {  # command...: run as the server's user, from / (the caller's cwd may be unreachable for it)
  if ((EUID == 0)); then (cd / && runuser -u "$PG_USER" -- "$@"); else (cd / && "$@"); fi
}

pg_running() {
  [[ -s $PG_DATA/postmaster.pid ]] && as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}

pg_port() {  # the port of the running server: line 4 of postmaster.pid
  pg_running || return 1
  sed -n 4p "$PG_DATA/postmaster.pid" | tr -dc '0-9'
}

pg_stop() {
  pg_running || return 0
  local out
  log "stopping postgres ($PG_DATA)"
  out=$(as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop 2>&1) ||
    die "pg_ctl stop failed: $out (server log: $PG_DATA/server.log)"
}

pg_reset() {  # a data dir whose Airflow home has no password any more: nobody can use it, start afresh
  case $PG_DATA in
    / | /var | /var/lib | /var/lib/neoxflow | /var/lib/neoxflow/postgres | "$HOME_DIR")
      die "refusing to remove $PG_DATA" ;;
  esac
  if [[ ! -e $PG_DATA/PG_VERSION ]] && [[ -n $(ls -A "$PG_DATA" 2>/dev/null) ]]; then
    die "$PG_DATA is not empty and not a PostgreSQL data directory: remove it or set NEOXFLOW_PG_DATA"
  fi
  pg_stop
  log "no $PG_PASSWORD_FILE: removing the old database in $PG_DATA"
  rm -rf "$PG_DATA"
}

pg_init() {
  [[ -x $PG_BIN/initdb && -x $PG_BIN/pg_ctl ]] ||
    die "no PostgreSQL server in ${PG_BIN:-/usr/lib/postgresql/*/bin}: apt-get install postgresql"
  if ((EUID == 0)); then
    id -u "$PG_USER" >/dev/null 2>&1 || die "user $PG_USER missing (Debian's postgresql package creates it)"
    install -d -m 755 "$(dirname "$PG_DATA")"
    install -d -m 700 -o "$PG_USER" -g "$(id -gn "$PG_USER")" "$PG_DATA"
  else
    install -d -m 700 "$PG_DATA"
  fi
  as_pg test -w "$PG_DATA" -a -x "$PG_DATA" ||
    die "$PG_USER cannot write $PG_DATA (a folder above it is closed to it?): set NEOXFLOW_PG_DATA"
  log "creating a PostgreSQL cluster in $PG_DATA (owner $PG_USER)"
  # peer for the socket (the server's own user administers it), passwords for TCP
  as_pg "$PG_BIN/initdb" -D "$PG_DATA" --auth-local=peer --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C >>"$LOG/postgres.log" 2>&1 || die "initdb failed ($LOG/postgres.log)"
  echo "$HOME_DIR" >"$PG_DATA/neoxflow_home"  # whose it is (pg_prune; for a person looking at it)
  # small settings for a 2-core machine: connections for 2 schedulers + 2 triggerers + dag-processor +
  # api-server (each with a SQLAlchemy pool of up to 15) and the airflow CLI; the socket stays in the data
  # directory so a system server's /var/run/postgresql is never touched; fsync stays on
  cat >>"$PG_DATA/postgresql.conf" <<EOF

# --- neoxflow (scripts/airflow_services.sh); the port is given on the command line
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_DATA'
max_connections = 200
shared_buffers = 128MB
work_mem = 4MB
password_encryption = scram-sha-256
log_min_messages = warning
EOF
}

pg_prune() {  # data dirs next to ours whose Airflow home is gone (clones since deleted: CI) and whose
  # server is stopped: nobody can use them again (their password went with the home)
  local d home
  [[ $EUID -eq 0 && -z ${NEOXFLOW_PG_DATA:-} ]] || return 0  # only in the default place: it holds only ours
  for d in "$(dirname "$PG_DATA")"/*/; do
    d=${d%/}
    [[ $d != "$PG_DATA" && -s $d/neoxflow_home && -s $d/PG_VERSION && ! -e $d/postmaster.pid ]] || continue
    home=$(cat "$d/neoxflow_home")
    [[ -d $home ]] && continue
    log "removing $d: a database of $home, which is gone"
    rm -rf "$d"
  done
}

pg_choose_port() {
  local want=$((PORT + 400)) p
  for p in $want $(seq $((want + 1)) $((want + 200))); do port_free "$p" && { echo "$p"; return; }; done
  die "no free port for postgres in $want..$((want + 200))"
}

pg_up() {
  mkdir -p "$LOG"
  if [[ ! -s $PG_PASSWORD_FILE && -e $PG_DATA ]]; then pg_reset; fi
  local fresh=0 port
  if [[ ! -s $PG_DATA/PG_VERSION ]]; then pg_init; fresh=1; fi
  if ! pg_running; then
    port=$(pg_choose_port)
    log "starting postgres on 127.0.0.1:$port ($PG_DATA)"
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -o "-p $port" -w -t 60 start \
      >>"$LOG/postgres.log" 2>&1 || die "postgres did not start ($LOG/postgres.log, $PG_DATA/server.log)"
  fi
  port=$(pg_port) || die "postgres is not running ($PG_DATA/server.log)"
  echo "$port" >"$RUN/postgres.port"
  if ((fresh)); then
    pg_prune
    local pw
    pw=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')  # hex: nothing to quote in SQL or a URL
    # the password goes through stdin, never on a command line
    if ! as_pg "$PG_BIN/psql" -h "$PG_DATA" -p "$port" -d postgres -v ON_ERROR_STOP=1 -q \
      >>"$LOG/postgres.log" 2>&1 <<SQL; then
CREATE ROLE airflow LOGIN PASSWORD '$pw';
CREATE DATABASE airflow OWNER airflow ENCODING 'UTF8';
SQL
      die "could not create the airflow role and database ($LOG/postgres.log)"
    fi
    (umask 077; echo "$pw" >"$PG_PASSWORD_FILE.tmp")
    mv "$PG_PASSWORD_FILE.tmp" "$PG_PASSWORD_FILE"  # written last: its presence says the database is ready
  fi
}

db_conn() {  # the running server's connection string for Airflow
  local port
  port=$(pg_port) && [[ -s $PG_PASSWORD_FILE ]] || return 1
  printf 'postgresql+psycopg2://airflow:%s@127.0.0.1:%s/airflow' "$(cat "$PG_PASSWORD_FILE")" "$port"
}

# --- processes we own ---------------------------------------------------------------------------------
pid_of() { [[ -s $RUN/$1.pid ]] && tr -dc '0-9' <"$RUN/$1.pid"; }

alive() {  # component: the pid in its pid file still runs this script's supervisor of that component
  # (the pid file names the supervisor, the leader of the component's process group; the supervisor's command
  # line is all there is to check: the api-server retitles itself and setproctitle clobbers /proc/<pid>/environ)
  local pid
  pid=$(pid_of "$1") || return 1
  [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "airflow_services.sh supervise $1 "
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

started_components() {  # the components with a pid file, in the order to stop them
  local f c order=()
  for f in "$RUN"/scheduler*.pid "$RUN"/triggerer*.pid "$RUN"/dag-processor.pid "$RUN"/api-server.pid; do
    [[ -e $f ]] || continue
    c=$(basename "$f" .pid)
    order+=("$c")
  done
  ((${#order[@]})) && printf '%s\n' "${order[@]}"
  return 0
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
  local name conn
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
  # set once postgres runs (cmd_up starts it)
  if conn=$(db_conn); then export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=$conn; fi
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
  # ports tied to the api-server's, so two service sets (make demo and the e2e tests) run side by side;
  # these are the first instance's, start_component moves a second instance's by 10 (see instance_env)
  export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=$((PORT + 100))
  export AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=$((PORT + 200))
  export AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK=True
  export AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT=$((PORT + 300))
  # High availability, tuned for a quick takeover on one machine (defaults in brackets). A component
  # counts as dead once its job's heartbeat is older than the threshold: the other triggerer then picks up
  # a dead triggerer's triggers (which re-attach to their Slurm jobs), the other scheduler resets the tasks
  # a dead scheduler had queued or running (checked every orphaned_tasks_check_interval) and fails or
  # retries a task whose worker stopped heartbeating. Thresholds stay at 3-4 heartbeats, so a busy but
  # live component is not declared dead on a loaded 2-core machine.
  export AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC=5                    # [5]
  export AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD=20    # [30]
  export AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC=5              # [5]
  export AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD=20    # [30]
  export AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL=20       # [300]
  export AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT=60     # [300]
  export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=${NEOXFLOW_DAG_REFRESH_S:-30}
  # fast local runs: the DAG reads these when it is parsed
  export NEOXFLOW_POLL_INTERVAL=${NEOXFLOW_POLL_INTERVAL:-2}
  export NEOXFLOW_RETRY_DELAY_S=${NEOXFLOW_RETRY_DELAY_S:-5}
  export NEOXFLOW_REPO=$REPO
  export PATH=$VENV/bin:$PATH
  # the run note (plugins/neoxflow/notifiers/run_note.py) is written through the REST API as admin: the
  # URL and the simple auth manager's own password file (the api-server writes it), never the password
  export NEOXFLOW_AIRFLOW_API_URL="http://127.0.0.1:$PORT"
  export NEOXFLOW_AIRFLOW_API_USER=admin
  export NEOXFLOW_AIRFLOW_API_PASSWORD_FILE=$HOME_DIR/simple_auth_manager_passwords.json.generated
}

instance_env() {  # component: the ports a second instance on this host must not share with the first
  local n off
  n=$(instance_of "$1")
  off=$((10 * (n - 1)))
  case $(command_of "$1") in
    scheduler)
      echo "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=$((PORT + 100 + off))"
      echo "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT=$((PORT + 300 + off))" ;;
    triggerer) echo "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=$((PORT + 200 + off))" ;;
  esac
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
start_component() {  # component: its supervisor, in a session (process group) of its own, with a pid file
  local c=$1
  alive "$c" && return
  local args extra
  args=("$(command_of "$c")")
  [[ $c == api-server ]] && args+=(--host 127.0.0.1 --port "$PORT" --workers 1)
  mapfile -t extra < <(instance_env "$c")
  log "starting $c"
  setsid env "${extra[@]}" bash "$REPO/scripts/airflow_services.sh" supervise "$c" "$VENV/bin/airflow" "${args[@]}" \
    </dev/null >>"$LOG/$c.log" 2>&1 &
  echo $! >"$RUN/$c.pid"
}

# A component that exits by itself is started again, as systemd (Restart=on-failure) or Kubernetes do in a
# deployment: with two schedulers, Airflow 3.3.2 can crash one on a duplicate asset_active row when a task
# emits events for a new Asset through an AssetAlias (seen in CI: the scheduler's loop ended with
# UniqueViolation "asset_active_pkey"), and a scheduler that stays dead leaves the other alone, or none once
# a test kills it. Each exit is written to crashes.log; RESTART_BURST quick exits in a row (each within
# RESTART_WINDOW_S of its start) give up, as systemd's start limit does. TERM (stop_component) stops the
# component without a restart; `kill` SIGKILLs the whole process group, supervisor included: a lost machine.
RESTART_DELAY_S=2
RESTART_BURST=5
RESTART_WINDOW_S=60

cmd_supervise() {  # component command...: run the command in the foreground of this process group
  local c=$1 child="" stopping=0 quick=0 started rc
  shift
  trap 'stopping=1; [[ -n $child ]] && kill -TERM "$child" 2>/dev/null' TERM INT
  while :; do
    started=$SECONDS
    "$@" &
    child=$!
    # a trapped signal ends `wait` early: wait again until the child has really gone
    while :; do
      rc=0
      wait "$child" || rc=$?
      kill -0 "$child" 2>/dev/null || break
    done
    ((stopping)) && exit 0
    if ((SECONDS - started < RESTART_WINDOW_S)); then quick=$((quick + 1)); else quick=1; fi
    printf '%s %s exited by itself with status %s after %ss\n' "$(date -u +%FT%TZ)" "$c" "$rc" \
      "$((SECONDS - started))" >>"$LOG/crashes.log"
    if ((quick >= RESTART_BURST)); then
      log "$c exited $quick times in a row within ${RESTART_WINDOW_S}s of starting: not restarting it"
      exit 1
    fi
    log "$c exited by itself (status $rc): starting it again in ${RESTART_DELAY_S}s"
    sleep "$RESTART_DELAY_S"
    ((stopping)) && exit 0
  done
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
  local what=$1 t=$2 c
  shift 2
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    # a component killed on purpose (`kill`) has no pid file and is not waited for; one whose supervisor
    # gave up (see cmd_supervise) will not come back
    for c in $(started_components); do
      alive "$c" || die "$c stopped while waiting for $what (logs: $LOG/$c.log, $LOG/crashes.log)"
    done
    ((SECONDS < end)) || die "$what not reached in ${t}s (logs: $LOG)"
    sleep 1
  done
}

dags_ready() {  # every DAG in $UNPAUSE is parsed (known to the API) and unpaused
  "$VENV/bin/python" "$REPO/scripts/airflow_rest.py" --env "$HOME_DIR/api.env" unpause $UNPAUSE
}

cmd_up() {
  load_env
  pg_up
  AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=$(db_conn) || die "no database connection ($PG_DATA)"
  export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN
  "$VENV/bin/airflow" db migrate >>"$LOG/db-migrate.log" 2>&1 || die "airflow db migrate failed ($LOG/db-migrate.log)"
  echo "$PORT" >"$RUN/api.port"
  write_api_env
  local c
  for c in "${COMPONENTS[@]}"; do start_component "$c"; done
  local t0=$SECONDS
  wait_until "healthy services" "$HEALTH_TIMEOUT" all_healthy
  wait_until "DAGs parsed ($UNPAUSE)" "$HEALTH_TIMEOUT" dags_ready
  log "up in $((SECONDS - t0))s: UI http://127.0.0.1:$PORT (user admin, password in" \
    "$HOME_DIR/simple_auth_manager_passwords.json.generated)"
}

cmd_down() {
  local c
  for c in $(started_components); do stop_component "$c"; done
  pg_stop
  log "down"
}

cmd_status() {
  local ok=0 c port body
  for c in "${COMPONENTS[@]}"; do
    if alive "$c"; then printf '%-14s running (pid %s)\n' "$c" "$(pid_of "$c")"
    else printf '%-14s stopped\n' "$c"; ok=1; fi
  done
  if port=$(pg_port); then printf '%-14s running (pid %s, 127.0.0.1:%s, %s)\n' postgres \
    "$(head -n 1 "$PG_DATA/postmaster.pid")" "$port" "$PG_DATA"
  else printf '%-14s stopped (%s)\n' postgres "$PG_DATA"; ok=1; fi
  port=$(cat "$RUN/api.port" 2>/dev/null || echo "${NEOXFLOW_API_PORT:-18793}")
  PORT=$port
  if body=$(health 2>/dev/null); then printf 'health         %s\n' "$body"; all_healthy || ok=1
  else printf 'health         no answer on http://127.0.0.1:%s\n' "$port"; ok=1; fi
  return $ok
}

known_component() {
  [[ " ${COMPONENTS[*]} " == *" $1 "* ]] || die "unknown component $1 (${COMPONENTS[*]})"
}

cmd_restart() {  # component [seconds-down]
  local c=$1 down=${2:-0}
  known_component "$c"
  load_env
  [[ -n ${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-} ]] || die "postgres is not running: run $0 up"
  stop_component "$c"
  sleep "$down"
  start_component "$c"
  wait_until "healthy services after restarting $c" "$HEALTH_TIMEOUT" all_healthy
  log "$c restarted"
}

cmd_kill() {  # component: a lost machine, not a shutdown: SIGKILL to its whole process group, no clean-up
  local c=$1 pid i
  known_component "$c"
  if ! alive "$c"; then  # it died before the fault we meant to inject: say how, from its own log
    tail -n 40 "$LOG/$c.log" >&2 2>/dev/null || true
    die "$c is not running (it exited by itself before this kill; the end of $LOG/$c.log is above)"
  fi
  pid=$(pid_of "$c")
  log "killing $c (process group $pid, SIGKILL)"
  kill -KILL -- "-$pid" 2>/dev/null || true
  for i in $(seq 1 50); do pgrep -g "$pid" >/dev/null 2>&1 || break; sleep 0.1; done
  rm -f "$RUN/$c.pid"
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  restart) shift; [[ $# -ge 1 ]] || die "usage: $0 restart COMPONENT [seconds-down]"; cmd_restart "$@" ;;
  kill) shift; [[ $# -eq 1 ]] || die "usage: $0 kill COMPONENT"; cmd_kill "$1" ;;
  supervise) shift; [[ $# -ge 2 ]] || die "usage: $0 supervise COMPONENT COMMAND..."; cmd_supervise "$@" ;;
  env) load_env; env | grep -E '^(AIRFLOW_|AIRFLOW__|NEOXFLOW_|SLURM_CONF)' | grep -v -E 'SECRET|JWT|_CONN' | sort ;;
  *) echo "usage: $0 up | down | status | restart COMPONENT [seconds-down] | kill COMPONENT | env" >&2; exit 2 ;;
esac
