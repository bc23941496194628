#!/usr/bin/env bash
# The embedded local cluster every neoxflow test and the demo run on:
#   munge, slurmctld, three slurmd "nodes" on this host (node1, node2 and node3, a spare that Slurm picks
#   last, as real clusters keep spares), optional slurmdbd + MariaDB
#   (accounting, so sacct works), sshd on 127.0.0.1 with generated host and client keys, moto_server
#   (S3/SNS/SQS/FSx API) and a folder standing in for the FSx mount.
#
# All state lives under one folder ($NEOXFLOW_STATE, default <repo>/.state/cluster). Every daemon is
# started by this script with a pid file there, and `down` ends exactly those pids (after checking that
# the pid still runs the program we started), never anything else on the machine.
#
#   scripts/localcluster.sh up [--accounting]   idempotent; switching accounting on/off restarts slurm
#   scripts/localcluster.sh down
#   scripts/localcluster.sh status              exit 0 only when everything answers
#   scripts/localcluster.sh restart sshd|slurmctld|moto [seconds-down]   fault injection for tests
#   scripts/localcluster.sh stop|start sshd|slurmctld|moto               the two halves of a restart
#
# moto keeps its state in memory; a real S3 endpoint that restarts keeps its data. So `stop moto` first
# snapshots every bucket and object (scripts/moto_state.py; writes racing the snapshot are lost, see
# its docstring) and `start moto` loads the snapshot before the port opens, then re-creates the alert
# topic and queue (same ARN and URL as before; queued alert messages are lost).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${NEOXFLOW_STATE:-$REPO/.state/cluster}
VENV=${NEOXFLOW_VENV:-$REPO/.venv}
SSH_PORT=${NEOXFLOW_SSH_PORT:-12222}
MOTO_PORT=${NEOXFLOW_MOTO_PORT:-15555}
C4_PORT=${NEOXFLOW_C4_PORT:-18080}
C4_SHARDS=${NEOXFLOW_C4_SHARDS:-4}
C4_DOCS=${NEOXFLOW_C4_DOCS:-400}
CTLD_PORT=${NEOXFLOW_SLURMCTLD_PORT:-16817}
DBD_PORT=${NEOXFLOW_SLURMDBD_PORT:-16819}
SLURMD_PORT0=${NEOXFLOW_SLURMD_PORT:-16820}
DB_PORT=${NEOXFLOW_DB_PORT:-13306}
CLUSTER_NAME=neoxflow
HOST=$(hostname -s)
# the real GPT-NeoX-20B tokenizer, kept in the repository (include/tokenizers/README.md)
TOKENIZER_FILE=${NEOXFLOW_TOKENIZER_FILE:-$REPO/include/tokenizers/20B_tokenizer.json}

ETC=$STATE/etc RUN=$STATE/run LOG=$STATE/log
MOTO_SNAPSHOT=$STATE/moto-snapshot
MOTO_PROC='moto_server\|moto_state.py'  # moto_server, or moto_state.py serve after a restart
SLURM_CONF=$ETC/slurm.conf
export SLURM_CONF

log() { printf '[localcluster] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- processes we own ---------------------------------------------------------------------------------
# --- cached state ---------------------------------------------------------------------------------------
# A cached state (the C4 source, MariaDB's data folder, keys) is reused only when its readiness marker holds
# the key it was built for. The marker is written last, after everything it vouches for, so a build cut
# short (a missing input, a full disk, ^C) leaves no marker and is rebuilt on the next `up`, never reused.
is_ready() {  # folder key
  [[ -f $1/.neoxflow-ready && $(cat "$1/.neoxflow-ready") == "$2" ]]
}

mark_ready() {  # folder key
  printf '%s' "$2" >"$1/.neoxflow-ready.tmp" && mv -f "$1/.neoxflow-ready.tmp" "$1/.neoxflow-ready"
}

pid_alive() {  # pidfile expected-substring
  local f=$1 want=$2 pid
  [[ -s $f ]] || return 1
  pid=$(tr -dc '0-9' 2>/dev/null <"$f") || return 1 # the daemon may remove it as it exits
  [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$want"
}

stop_pid() {  # pidfile expected-substring
  local f=$1 want=$2 pid i
  if pid_alive "$f" "$want"; then
    pid=$(tr -dc '0-9' <"$f")
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do pid_alive "$f" "$want" || break; sleep 0.1; done
    pid_alive "$f" "$want" && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

wait_for() {  # description timeout-seconds command...
  local what=$1 t=$2; shift 2
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || die "$what did not come up in ${t}s (logs: $LOG)"
    sleep 0.2
  done
}

# --- installation ---------------------------------------------------------------------------------------
ensure_packages() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurm-wlm)
  command -v munged >/dev/null || missing+=(munge)
  [[ -x /usr/sbin/sshd ]] || missing+=(openssh-server)
  command -v ssh-keygen >/dev/null || missing+=(openssh-client)
  if [[ ${ACCOUNTING:-0} == 1 ]]; then
    command -v slurmdbd >/dev/null || missing+=(slurmdbd)
    command -v mariadbd >/dev/null || missing+=(mariadb-server)
  fi
  if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
  [[ -x $VENV/bin/python ]] || die "Python env $VENV missing: run 'make venv' first"
}

# --- configuration --------------------------------------------------------------------------------------
write_slurm_conf() {
  local acct_lines max_array_line=""
  # Slurm's default MaxArraySize (1001: indices 0..1000) unless NEOXFLOW_MAX_ARRAY_SIZE says otherwise, so
  # that the data arrays meet the limit a stock cluster has (tests lower it to prove the split)
  [[ -n ${NEOXFLOW_MAX_ARRAY_SIZE:-} ]] && max_array_line="MaxArraySize=$NEOXFLOW_MAX_ARRAY_SIZE"
  if [[ ${ACCOUNTING:-0} == 1 ]]; then
    acct_lines="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$RUN/munge.socket
JobCompType=jobcomp/none"
  else
    acct_lines="AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG/jobcomp.txt"
  fi
  cat >"$SLURM_CONF.tmp" <<EOF
# Generated by scripts/localcluster.sh - the embedded neoxflow test cluster. Edits are overwritten.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT0
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$RUN/munge.socket
CredType=cred/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd.%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$acct_lines
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=1
MinJobAge=${NEOXFLOW_MIN_JOB_AGE:-30}
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MpiDefault=none
$max_array_line
# node3 is the spare: a higher Weight makes Slurm allocate it only when node1/node2 cannot run a job
NodeName=node[1-2] NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$SLURMD_PORT0-$((SLURMD_PORT0 + 1)) CPUs=2 RealMemory=8000 Weight=1 State=UNKNOWN
NodeName=node3 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((SLURMD_PORT0 + 2)) CPUs=2 RealMemory=8000 Weight=100 State=UNKNOWN
PartitionName=debug Nodes=node[1-3] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  mv "$SLURM_CONF.tmp" "$SLURM_CONF"
  cat >"$ETC/slurmdbd.conf" <<EOF
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$RUN/munge.socket
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=root
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$ETC/slurmdbd.conf"
}

# --- daemons --------------------------------------------------------------------------------------------
start_munge() {
  pid_alive "$RUN/munged.pid" munged && return
  if [[ $(stat -c %s "$ETC/munge.key" 2>/dev/null) != 1024 ]]; then  # whole, or made anew
    dd if=/dev/urandom of="$ETC/munge.key.tmp" bs=1024 count=1 status=none && mv -f "$ETC/munge.key.tmp" "$ETC/munge.key"
  fi
  chmod 400 "$ETC/munge.key"
  /usr/sbin/munged --force --key-file="$ETC/munge.key" --socket="$RUN/munge.socket" \
    --pid-file="$RUN/munged.pid" --log-file="$LOG/munged.log" --seed-file="$STATE/munge.seed"
  wait_for munged 10 munge -n -S "$RUN/munge.socket"
}

start_mariadb() {
  pid_alive "$RUN/mariadb.pid" mariadbd && return
  if ! is_ready "$STATE/mysql" installed; then
    rm -rf "$STATE/mysql"
    mariadb-install-db --user=root --datadir="$STATE/mysql" --auth-root-authentication-method=normal \
      --skip-test-db >"$LOG/mariadb-install.log" 2>&1 || die "mariadb-install-db failed ($LOG/mariadb-install.log)"
    mark_ready "$STATE/mysql" installed
  fi
  setsid /usr/sbin/mariadbd --no-defaults --user=root --datadir="$STATE/mysql" --socket="$RUN/mysql.sock" \
    --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$RUN/mariadb.pid" --skip-name-resolve \
    --innodb-buffer-pool-size=64M --log-error="$LOG/mariadb.log" </dev/null >/dev/null 2>&1 &
  wait_for mariadb 60 mariadb --no-defaults -uroot --socket="$RUN/mysql.sock" -e 'select 1'
}

start_slurmdbd() {
  pid_alive "$RUN/slurmdbd.pid" slurmdbd && return
  /usr/sbin/slurmdbd
  wait_for slurmdbd 60 sacctmgr -n list cluster
  sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null 2>&1 || true
}

start_slurmctld() {
  pid_alive "$RUN/slurmctld.pid" slurmctld && return
  /usr/sbin/slurmctld -f "$SLURM_CONF"
  wait_for slurmctld 30 scontrol ping
}

start_slurmd() {  # node name
  local n=$1
  mkdir -p "$STATE/slurmd.$n"
  pid_alive "$RUN/slurmd.$n.pid" "slurmd" && return
  /usr/sbin/slurmd -f "$SLURM_CONF" -N "$n"
}

nodes_ready() {
  # every node registered and not down/unknown
  local states
  states=$(sinfo -h -N -o '%N %t' 2>/dev/null) || return 1
  local n
  for n in node1 node2 node3; do grep -q "^$n \\(idle\\|alloc\\|mix\\)" <<<"$states" || return 1; done
}

setup_ssh() {
  mkdir -p "$STATE/ssh" /run/sshd
  local key
  for key in host_ed25519:neoxflow-localcluster-host client_ed25519:neoxflow-airflow; do
    # a key pair counts only when both halves are there (ssh-keygen writes the private half first)
    [[ -s $STATE/ssh/${key%%:*} && -s $STATE/ssh/${key%%:*}.pub ]] && continue
    rm -f "$STATE/ssh/${key%%:*}" "$STATE/ssh/${key%%:*}.pub"
    ssh-keygen -q -t ed25519 -N '' -C "${key#*:}" -f "$STATE/ssh/${key%%:*}"
  done
  cp "$STATE/ssh/client_ed25519.pub" "$STATE/ssh/authorized_keys"
  chmod 600 "$STATE/ssh/authorized_keys" "$STATE/ssh/host_ed25519" "$STATE/ssh/client_ed25519"
  cat >"$STATE/ssh/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $SSH_PORT
HostKey $STATE/ssh/host_ed25519
PidFile $RUN/sshd.pid
AuthorizedKeysFile $STATE/ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
MaxSessions 64
MaxStartups 64:30:128
Subsystem sftp internal-sftp
SetEnv SLURM_CONF=$SLURM_CONF NEOXFLOW_FSX=$STATE/fsx NEOXFLOW_CLUSTER_PYTHON=$VENV/bin/python AWS_ENDPOINT_URL=http://127.0.0.1:$MOTO_PORT AWS_ACCESS_KEY_ID=localcluster AWS_SECRET_ACCESS_KEY=localcluster AWS_DEFAULT_REGION=us-east-1
EOF
}

start_sshd() {
  pid_alive "$RUN/sshd.pid" "$STATE/ssh/sshd_config" && return
  /usr/sbin/sshd -f "$STATE/ssh/sshd_config" -E "$LOG/sshd.log"
  wait_for sshd 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$SSH_PORT"
}

start_moto() {  # [snapshot folder to load before the port opens]
  pid_alive "$RUN/moto.pid" "$MOTO_PROC" && return
  if [[ -n ${1:-} ]]; then
    setsid "$VENV/bin/python" "$REPO/scripts/moto_state.py" serve --host 127.0.0.1 --port "$MOTO_PORT" \
      --restore "$1" </dev/null >>"$LOG/moto.log" 2>&1 &
  else
    setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" </dev/null >"$LOG/moto.log" 2>&1 &
  fi
  echo $! >"$RUN/moto.pid"
  wait_for moto_server 60 bash -c "exec 3<>/dev/tcp/127.0.0.1/$MOTO_PORT"
}

stop_moto() {  # snapshot S3 (what a real endpoint keeps), then stop
  if pid_alive "$RUN/moto.pid" "$MOTO_PROC"; then
    "$VENV/bin/python" "$REPO/scripts/moto_state.py" snapshot --endpoint "http://127.0.0.1:$MOTO_PORT" \
      --out "$MOTO_SNAPSHOT" >&2 || die "S3 snapshot failed: moto left running"
  fi
  stop_pid "$RUN/moto.pid" "$MOTO_PROC"
}

restart_moto_after() {  # start moto with the snapshot taken by stop_moto, and the same alert topic
  local before
  before=$(cat "$STATE/alerts.env" 2>/dev/null || true)
  start_moto "$([[ -s $MOTO_SNAPSHOT/index.json ]] && echo "$MOTO_SNAPSHOT")"
  setup_alert_topic
  if [[ -n $before && $before != "$(cat "$STATE/alerts.env")" ]]; then
    die "alert topic/queue changed across the moto restart: $before -> $(cat "$STATE/alerts.env")"
  fi
  rm -rf "$MOTO_SNAPSHOT"
}

start_c4_source() {
  # C4-format shards (and the tokenizer JSON) served over HTTP: the stand-in for huggingface.co
  # Built in a side folder and swapped in whole: the served folder always holds every shard and the
  # tokenizer of its key (what it was built from), or the build starts again.
  local dir=$STATE/c4-source key
  [[ -s $TOKENIZER_FILE ]] || die "tokenizer $TOKENIZER_FILE missing (it is part of the repository: is the clone whole?)"
  key="shards=$C4_SHARDS docs=$C4_DOCS seed=1234 fixture=$(sha256sum <"$REPO/scripts/localcluster/c4_fixture.py" | cut -c1-16)"
  key+=" tokenizer=$(sha256sum <"$TOKENIZER_FILE" | cut -c1-16)"
  if ! is_ready "$dir" "$key"; then
    log "building the C4 source ($C4_SHARDS shards x $C4_DOCS documents)"
    rm -rf "$dir.partial" && mkdir -p "$dir.partial"
    "$VENV/bin/python" "$REPO/scripts/localcluster/c4_fixture.py" --out "$dir.partial" --train "$C4_SHARDS" \
      --validation 1 --docs "$C4_DOCS" --seed 1234 >"$LOG/c4_fixture.log" 2>&1 || die "c4 fixture generation failed ($LOG/c4_fixture.log)"
    cp "$TOKENIZER_FILE" "$dir.partial/20B_tokenizer.json"
    mark_ready "$dir.partial" "$key"
    stop_pid "$RUN/c4source.pid" http_source.py  # it may serve the folder being replaced
    rm -rf "$dir" && mv "$dir.partial" "$dir"
  fi
  pid_alive "$RUN/c4source.pid" http_source.py && return
  setsid "$VENV/bin/python" "$REPO/scripts/localcluster/http_source.py" --dir "$dir" --host 127.0.0.1 --port "$C4_PORT" \
    </dev/null >"$LOG/c4source.log" 2>&1 &
  echo $! >"$RUN/c4source.pid"
  wait_for "c4 source" 20 bash -c "exec 3<>/dev/tcp/127.0.0.1/$C4_PORT"
}

setup_alert_topic() {
  # An SNS topic for neoxflow's alerts, with an SQS queue subscribed: the local "pager" tests read back.
  "$VENV/bin/python" - "$MOTO_PORT" >"$STATE/alerts.env" <<'PY'
import sys, boto3
kw = dict(endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1",
          aws_access_key_id="localcluster", aws_secret_access_key="localcluster")
sns, sqs = boto3.client("sns", **kw), boto3.client("sqs", **kw)
topic = sns.create_topic(Name="neoxflow-alerts")["TopicArn"]
queue = sqs.create_queue(QueueName="neoxflow-alerts-inbox")["QueueUrl"]
qarn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=qarn)
print(f"export NEOXFLOW_ALERT_SNS_TOPIC_ARN={topic}")
print(f"export NEOXFLOW_ALERT_INBOX_URL={queue}")
PY
}

write_connections() {
  # Airflow connections for tests and the demo; the SSH one pins the generated host key (no blanket
  # no_host_key_check), the AWS one points the amazon provider's hooks at moto_server.
  local host_key
  host_key=$(cut -d' ' -f1,2 "$STATE/ssh/host_ed25519.pub")
  "$VENV/bin/python" - "$STATE" "$SSH_PORT" "$MOTO_PORT" "$host_key" "$C4_PORT" <<'PY'
import json, sys
state, ssh_port, moto_port, host_key, c4_port = sys.argv[1:]
ssh = {"conn_type": "ssh", "host": "127.0.0.1", "port": int(ssh_port), "login": "root",
       "extra": {"key_file": f"{state}/ssh/client_ed25519", "host_key": host_key,
                 "conn_timeout": 10, "cmd_timeout": 60}}
aws = {"conn_type": "aws", "login": "localcluster", "password": "localcluster",
       "extra": {"endpoint_url": f"http://127.0.0.1:{moto_port}", "region_name": "us-east-1"}}
conns = {"neoxflow_cluster": ssh, "aws_default": aws}
with open(f"{state}/connections.json", "w") as f:
    json.dump(conns, f, indent=2)
with open(f"{state}/env.sh", "w") as f:
    f.write("# Source me: Airflow connections and Slurm client config for the local cluster.\n")
    f.write(f"export SLURM_CONF={state}/etc/slurm.conf\n")
    f.write(f"export NEOXFLOW_FSX={state}/fsx\n")
    f.write(f"export NEOXFLOW_C4_URL_TEMPLATE=http://127.0.0.1:{c4_port}/{{name}}\n")
    f.write(f"export NEOXFLOW_TOKENIZER_SOURCE=http://127.0.0.1:{c4_port}/20B_tokenizer.json\n")
    for cid, c in conns.items():
        f.write(f"export AIRFLOW_CONN_{cid.upper()}='{json.dumps(c)}'\n")
PY
}

# --- commands -------------------------------------------------------------------------------------------
current_accounting() { grep -q 'accounting_storage/slurmdbd' "$SLURM_CONF" 2>/dev/null && echo 1 || echo 0; }

stop_slurm() {
  for n in node1 node2 node3; do stop_pid "$RUN/slurmd.$n.pid" slurmd; done
  stop_pid "$RUN/slurmctld.pid" slurmctld
}

cmd_up() {
  ACCOUNTING=0
  [[ ${1:-} == --accounting ]] && ACCOUNTING=1
  ensure_packages
  mkdir -p "$ETC" "$RUN" "$LOG" "$STATE/slurmctld" "$STATE/fsx"
  if [[ -f $SLURM_CONF && $(current_accounting) != "$ACCOUNTING" ]]; then
    log "switching accounting to $ACCOUNTING: restarting slurm"
    stop_slurm
  fi
  local conf_before
  conf_before=$(cat "$SLURM_CONF" 2>/dev/null || true)
  write_slurm_conf
  start_munge
  if [[ $ACCOUNTING == 1 ]]; then start_mariadb; start_slurmdbd; fi
  if pid_alive "$RUN/slurmctld.pid" slurmctld && [[ $(cat "$SLURM_CONF") != "$conf_before" ]]; then
    # a restart, not `scontrol reconfigure`: Slurm 22.05 reports a raised MaxArraySize after a reconfigure
    # but keeps refusing arrays above the limit it started with. Jobs survive (StateSaveLocation).
    log "slurm.conf changed (e.g. NEOXFLOW_MAX_ARRAY_SIZE): restarting slurmctld"
    stop_pid "$RUN/slurmctld.pid" slurmctld
  fi
  start_slurmctld
  start_slurmd node1
  start_slurmd node2
  start_slurmd node3
  # a node left DOWN by an earlier fault-injection test must not poison the next run
  scontrol update nodename=node[1-3] state=resume >/dev/null 2>&1 || true
  wait_for "slurm nodes" 60 nodes_ready
  setup_ssh
  start_sshd
  start_moto
  start_c4_source
  setup_alert_topic
  write_connections
  cat "$STATE/alerts.env" >>"$STATE/env.sh"
  log "up (accounting=$ACCOUNTING): ssh root@127.0.0.1:$SSH_PORT, moto http://127.0.0.1:$MOTO_PORT, fsx $STATE/fsx"
  log "connections: source $STATE/env.sh"
}

cmd_down() {
  stop_pid "$RUN/c4source.pid" http_source.py
  stop_pid "$RUN/moto.pid" "$MOTO_PROC"
  rm -rf "$MOTO_SNAPSHOT"
  stop_pid "$RUN/sshd.pid" "$STATE/ssh/sshd_config"
  stop_slurm
  stop_pid "$RUN/slurmdbd.pid" slurmdbd
  stop_pid "$RUN/mariadb.pid" mariadbd
  stop_pid "$RUN/munged.pid" munged
  log "down"
}

cmd_status() {
  local ok=0 name want
  for pair in munged.pid:munged slurmctld.pid:slurmctld slurmd.node1.pid:slurmd slurmd.node2.pid:slurmd slurmd.node3.pid:slurmd \
    sshd.pid:sshd "moto.pid:$MOTO_PROC" c4source.pid:http_source.py slurmdbd.pid:slurmdbd mariadb.pid:mariadbd; do
    name=${pair%%:*} want=${pair##*:}
    if pid_alive "$RUN/$name" "$want"; then
      printf '%-18s running (pid %s)\n' "${name%.pid}" "$(cat "$RUN/$name")"
    else
      printf '%-18s stopped\n' "${name%.pid}"
      case $name in slurmdbd.pid | mariadb.pid) [[ $(current_accounting) == 1 ]] && ok=1 ;; *) ok=1 ;; esac
    fi
  done
  printf 'accounting         %s\n' "$(current_accounting)"
  sinfo -N -o '%N %t %E' 2>/dev/null || ok=1
  return $ok
}

cmd_stop() {  # service: the first half of a restart (fault injection for tests)
  case ${1:-} in
    sshd)  # also drops open sessions (children of our sshd), like a network cut would
      if pid_alive "$RUN/sshd.pid" "$STATE/ssh/sshd_config"; then pkill -P "$(cat "$RUN/sshd.pid")" sshd || true; fi
      stop_pid "$RUN/sshd.pid" "$STATE/ssh/sshd_config" ;;
    slurmctld) stop_pid "$RUN/slurmctld.pid" slurmctld ;;
    moto) stop_moto ;;
    *) die "stop: unknown service ${1:-} (sshd, slurmctld, moto)" ;;
  esac
}

cmd_start() {  # service: the second half of a restart
  case ${1:-} in
    sshd) start_sshd ;;
    slurmctld) start_slurmctld ;;
    moto) restart_moto_after ;;
    *) die "start: unknown service ${1:-} (sshd, slurmctld, moto)" ;;
  esac
}

cmd_restart() {  # service [seconds-down]: fault injection for tests
  local svc=${1:-} down=${2:-0}
  cmd_stop "$svc"
  sleep "$down"
  cmd_start "$svc"
  log "$svc restarted (down ${down}s)"
}

case ${1:-} in
  up) shift; cmd_up "$@" ;;
  restart) shift; cmd_restart "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  start) shift; cmd_start "$@" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up [--accounting] | down | status | restart sshd|slurmctld|moto [seconds-down] | stop|start sshd|slurmctld|moto" >&2; exit 2 ;;
esac
