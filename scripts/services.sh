#!/usr/bin/env bash
# Local backing services for nearline-rec tests and development:
#   * Apache Kafka 3.9.1, single combined broker+controller node (KRaft), run from
#     Maven Central jars (scripts/kafka/pom.xml), no Docker and no tarball;
#   * Redis from Debian's redis-server package.
#
# Usage: scripts/services.sh start  [kafka|redis|all]   (default: all)
#        scripts/services.sh stop   [kafka|redis|all]
#        scripts/services.sh restart [kafka|redis|all]  stop, then start again; Kafka keeps
#                                    its data (same cluster id, topics, offsets, groups)
#        scripts/services.sh status [kafka|redis|all]   exit 0 iff all named services run
#        scripts/services.sh wait   [kafka|redis|all]   block until they accept clients
#
# Environment:
#   NEARLINE_SERVICES_DIR           state dir (pids, logs, data)    default: <repo>/.services
#   NEARLINE_KAFKA_PORT             client (PLAINTEXT) port         default: 9092
#   NEARLINE_KAFKA_CONTROLLER_PORT  KRaft controller port           default: 9093
#   NEARLINE_REDIS_PORT             Redis port                      default: 6379
#   NEARLINE_KAFKA_LIBS_DIR         jar cache (survives runs)       default: ~/.cache/nearline-rec/kafka-3.9.1/libs
#   NEARLINE_KAFKA_HEAP_OPTS        broker heap                     default: -Xms512m -Xmx512m
#   NEARLINE_KAFKA_START_TIMEOUT    seconds to wait for Kafka       default: 90
#   NEARLINE_REDIS_START_TIMEOUT    seconds to wait for Redis       default: 30
#   NEARLINE_STOP_TIMEOUT           seconds between TERM and KILL   default: 30
#   NEARLINE_MVN_TIMEOUT            seconds for the Maven resolve   default: 600
#   NEARLINE_KAFKA_KEEP_DATA        1: `start kafka` reuses formatted storage in the state
#                                   dir instead of formatting afresh   default: 0
#
# One node of a multi-broker KRaft cluster (each node its own state dir and ports; start
# them together, a quorum needs a majority):
#   NEARLINE_KAFKA_NODE_ID          this node's id                     default: 1
#   NEARLINE_KAFKA_QUORUM_VOTERS    id@host:controller_port,...        default: this node only
#   NEARLINE_KAFKA_CLUSTER_ID       the same on every node             default: a new one
#   NEARLINE_KAFKA_REPLICATION      replication of the broker's own topics (group offsets,
#                                   transactions) and the default for new topics   default: 1
#
# Extra authenticated / encrypted listeners (off unless their port is set; the PLAINTEXT
# listener stays for the broker itself and for tools):
#   NEARLINE_KAFKA_SASL_PORT        SASL_PLAINTEXT listener, mechanism PLAIN
#   NEARLINE_KAFKA_SSL_PORT         SSL (TLS) listener
#   NEARLINE_KAFKA_SASL_SSL_PORT    SASL_SSL listener (PLAIN over TLS)
#   NEARLINE_KAFKA_SASL_USERS       user:password[,user:password...] accepted by the SASL
#                                   listeners ([A-Za-z0-9._-] only)   required with a SASL port
#   NEARLINE_KAFKA_SSL_PEM          PEM file with the broker's private key (PKCS#8, not
#                                   encrypted) and certificate chain   required with a TLS port
#
# Every `start kafka` formats fresh KRaft storage with a new cluster id: stale consumer
# groups from an earlier run confuse Faust's rebalancing, so nothing is kept. `restart
# kafka` (or NEARLINE_KAFKA_KEEP_DATA=1) is the exception: it models a broker restart, so
# the same storage comes back. Redis runs without persistence, so a restarted one is empty.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"
STATE="${NEARLINE_SERVICES_DIR:-$REPO/.services}"

KAFKA_VERSION="3.9.1"
KAFKA_HOST="127.0.0.1"
KAFKA_PORT="${NEARLINE_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${NEARLINE_KAFKA_CONTROLLER_PORT:-9093}"
REDIS_HOST="127.0.0.1"
REDIS_PORT="${NEARLINE_REDIS_PORT:-6379}"

KAFKA_NODE_ID="${NEARLINE_KAFKA_NODE_ID:-1}"
KAFKA_QUORUM_VOTERS="${NEARLINE_KAFKA_QUORUM_VOTERS:-$KAFKA_NODE_ID@$KAFKA_HOST:$KAFKA_CONTROLLER_PORT}"
KAFKA_CLUSTER_ID="${NEARLINE_KAFKA_CLUSTER_ID:-}"
KAFKA_REPLICATION="${NEARLINE_KAFKA_REPLICATION:-1}"
KAFKA_MIN_ISR=$((KAFKA_REPLICATION > 1 ? 2 : 1))

KAFKA_POM="$SCRIPT_DIR/kafka/pom.xml"
KAFKA_LOG4J="$SCRIPT_DIR/kafka/log4j.properties"
KAFKA_LIBS="${NEARLINE_KAFKA_LIBS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nearline-rec/kafka-$KAFKA_VERSION/libs}"
KAFKA_HEAP_OPTS="${NEARLINE_KAFKA_HEAP_OPTS:--Xms512m -Xmx512m}"
KAFKA_START_TIMEOUT="${NEARLINE_KAFKA_START_TIMEOUT:-90}"
REDIS_START_TIMEOUT="${NEARLINE_REDIS_START_TIMEOUT:-30}"
STOP_TIMEOUT="${NEARLINE_STOP_TIMEOUT:-30}"
MVN_TIMEOUT="${NEARLINE_MVN_TIMEOUT:-600}"
KAFKA_KEEP_DATA="${NEARLINE_KAFKA_KEEP_DATA:-0}"
KAFKA_SASL_PORT="${NEARLINE_KAFKA_SASL_PORT:-}"
KAFKA_SSL_PORT="${NEARLINE_KAFKA_SSL_PORT:-}"
KAFKA_SASL_SSL_PORT="${NEARLINE_KAFKA_SASL_SSL_PORT:-}"
KAFKA_SASL_USERS="${NEARLINE_KAFKA_SASL_USERS:-}"
KAFKA_SSL_PEM="${NEARLINE_KAFKA_SSL_PEM:-}"

KAFKA_PID="$STATE/kafka.pid"
KAFKA_PORTFILE="$STATE/kafka.port"
KAFKA_LOG="$STATE/kafka.log"
KAFKA_DATA="$STATE/kafka-data"
KAFKA_PROPS="$STATE/kafka-server.properties"
MVN_LOG="$STATE/mvn.log"
REDIS_PID="$STATE/redis.pid"
REDIS_PORTFILE="$STATE/redis.port"
REDIS_LOG="$STATE/redis.log"
REDIS_DATA="$STATE/redis-data"

if command -v python >/dev/null 2>&1; then PYTHON="${PYTHON:-python}"; else PYTHON="${PYTHON:-python3}"; fi

# ---------------------------------------------------------------- helpers

say() { printf '%s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

now() { date +%s; }

log_tail() {  # log_tail FILE [LINES]
  local file="$1" lines="${2:-40}"
  if [[ -s "$file" ]]; then
    printf -- '--- last %s lines of %s ---\n' "$lines" "$file" >&2
    tail -n "$lines" "$file" >&2
    printf -- '--- end of %s ---\n' "$file" >&2
  else
    printf '(log %s is empty or missing)\n' "$file" >&2
  fi
}

require_uint() {  # require_uint NAME VALUE
  [[ "$2" =~ ^[0-9]+$ ]] || die "$1 must be a whole number, got '$2'"
}

# pid stored in FILE if that process is alive and its command line contains PATTERN
# (guards against a recycled pid belonging to some unrelated process).
live_pid() {  # live_pid PIDFILE PATTERN -> prints pid, returns 0/1
  local file="$1" pattern="$2" pid
  [[ -f "$file" ]] || return 1
  pid="$(tr -dc '0-9' <"$file")"
  [[ -n "$pid" ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [[ -r "/proc/$pid/cmdline" ]]; then
    local cmdline
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    [[ "$cmdline" == *"$pattern"* ]] || return 1
  fi
  printf '%s\n' "$pid"
}

port_answers() {  # port_answers HOST PORT: something accepts TCP connections
  timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

# Is the port unavailable for a new listener on HOST? Tries to bind it (like the
# server would, with SO_REUSEADDR) and falls back to a connect probe.
port_busy() {  # port_busy HOST PORT
  local rc=0
  "$PYTHON" - "$1" "$2" <<'PY' 2>/dev/null || rc=$?
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind((sys.argv[1], int(sys.argv[2])))
except OSError:
    sys.exit(0)  # busy
finally:
    s.close()
sys.exit(1)      # free
PY
  case "$rc" in
    0) return 0 ;;
    1) return 1 ;;
    *) port_answers "$1" "$2" ;;  # python unusable: connect probe only
  esac
}

# A service started from this state dir on other ports than the ones configured now
# must be stopped first; otherwise we would wait on (or report) the wrong port.
check_same_ports() {  # check_same_ports NAME PORTFILE PID WANTED
  local name="$1" portfile="$2" pid="$3" wanted="$4" had
  [[ -f "$portfile" ]] || return 0
  had="$(cat "$portfile")"
  [[ "$had" == "$wanted" ]] && return 0
  die "$name is already running from $STATE on port(s) $had (pid $pid), not $wanted; run 'scripts/services.sh stop $name' first"
}

recorded_port() {  # recorded_port PORTFILE DEFAULT -> first port recorded at start
  local p=""
  [[ -f "$1" ]] && p="$(cut -d' ' -f1 <"$1")"
  printf '%s\n' "${p:-$2}"
}

# Start CMD... detached in its own session with stdin closed, stdout/stderr appended
# to LOG and the lock fd closed; the pid of the exec'd command goes to PIDFILE.
spawn() {  # spawn PIDFILE LOG CMD...
  local pidfile="$1" log="$2"; shift 2
  rm -f "$pidfile"
  local setsid_cmd=()
  command -v setsid >/dev/null 2>&1 && setsid_cmd=(setsid)
  # bash -c writes its own pid, then execs the command under that same pid.
  nohup "${setsid_cmd[@]}" bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" \
    </dev/null >>"$log" 2>&1 9>&- &
  local i
  for ((i = 0; i < 100; i++)); do
    [[ -s "$pidfile" ]] && return 0
    sleep 0.05
  done
  die "could not start $1 (no pid written to $pidfile; see $log)"
}

# TERM, wait up to STOP_TIMEOUT s, then KILL.
stop_pid() {  # stop_pid NAME PID
  local name="$1" pid="$2" deadline
  kill -TERM "$pid" 2>/dev/null || return 0
  deadline=$(($(now) + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null; do
    if (($(now) >= deadline)); then
      warn "$name (pid $pid) did not exit within ${STOP_TIMEOUT}s after SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      break
    fi
    sleep 0.2
  done
}

with_state_lock() {
  mkdir -p "$STATE"
  exec 9>"$STATE/.lock"
  if command -v flock >/dev/null 2>&1; then
    flock -w $((MVN_TIMEOUT + 300)) 9 || die "another scripts/services.sh holds $STATE/.lock"
  fi
}

# ---------------------------------------------------------------- kafka

KAFKA_MATCH="kafka.Kafka"

kafka_client_check() {  # one quick metadata round trip with kafka-python
  timeout 30 "$PYTHON" - "$KAFKA_HOST:$KAFKA_PORT" <<'PY' >/dev/null 2>&1
import sys
from kafka import KafkaAdminClient
admin = KafkaAdminClient(bootstrap_servers=sys.argv[1], client_id="nearline-services-check",
                         request_timeout_ms=5000)
try:
    admin.list_topics()
finally:
    admin.close()
PY
}

have_kafka_python() { "$PYTHON" -c 'import kafka' >/dev/null 2>&1; }

kafka_ready() {
  port_answers "$KAFKA_HOST" "$KAFKA_PORT" || return 1
  if have_kafka_python; then
    kafka_client_check
  else
    grep -q "Kafka Server started" "$KAFKA_LOG" 2>/dev/null
  fi
}

kafka_wait() {  # kafka_wait PID
  local pid="$1" start deadline
  have_kafka_python || warn "kafka-python is not importable by $PYTHON; only checking the port and the log"
  start=$(now); deadline=$((start + KAFKA_START_TIMEOUT))
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      printf 'error: Kafka (pid %s) exited during startup (log: %s)\n' "$pid" "$KAFKA_LOG" >&2
      log_tail "$KAFKA_LOG" 60
      rm -f "$KAFKA_PID" "$KAFKA_PORTFILE"
      exit 1
    fi
    if kafka_ready; then
      KAFKA_WAITED=$(($(now) - start))
      return 0
    fi
    if (($(now) >= deadline)); then
      printf 'error: Kafka did not accept clients on %s:%s within %ss (log: %s)\n' \
        "$KAFKA_HOST" "$KAFKA_PORT" "$KAFKA_START_TIMEOUT" "$KAFKA_LOG" >&2
      log_tail "$KAFKA_LOG" 60
      return 1
    fi
    sleep 1
  done
}

kafka_libs_ok() {
  [[ -f "$KAFKA_LIBS/.pom.sha256" ]] || return 1
  [[ "$(cat "$KAFKA_LIBS/.pom.sha256")" == "$(sha256sum <"$KAFKA_POM" | cut -d' ' -f1)" ]] || return 1
  local jar
  for jar in "kafka_2.13-$KAFKA_VERSION.jar" "kafka-clients-$KAFKA_VERSION.jar" \
    "kafka-server-$KAFKA_VERSION.jar" "kafka-metadata-$KAFKA_VERSION.jar" \
    "kafka-raft-$KAFKA_VERSION.jar" "scala-library-"*.jar "reload4j-"*.jar "slf4j-reload4j-"*.jar; do
    compgen -G "$KAFKA_LIBS/$jar" >/dev/null || return 1
  done
}

kafka_resolve_libs() {
  kafka_libs_ok && return 0
  command -v mvn >/dev/null 2>&1 ||
    die "mvn not found (install Maven: apt-get install -y maven)"
  local parent tmp t0
  parent="$(dirname "$KAFKA_LIBS")"
  mkdir -p "$parent"
  # another checkout may share the cache: serialise on it (fd 8, closed for children)
  exec 8>"$parent/.lock"
  command -v flock >/dev/null 2>&1 && flock -w "$MVN_TIMEOUT" 8
  if kafka_libs_ok; then exec 8>&-; return 0; fi
  tmp="$KAFKA_LIBS.tmp.$$"
  rm -rf "$tmp"
  say "kafka: resolving Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_LIBS (log: $MVN_LOG)"
  t0=$(now)
  if ! timeout "$MVN_TIMEOUT" mvn -B -q -f "$KAFKA_POM" dependency:copy-dependencies \
    "-Dkafka.libs.dir=$tmp" >"$MVN_LOG" 2>&1 8>&- 9>&-; then
    rm -rf "$tmp"
    tail -n 20 "$MVN_LOG" >&2 || true
    die "could not resolve Kafka jars from Maven Central (see $MVN_LOG)"
  fi
  sha256sum <"$KAFKA_POM" | cut -d' ' -f1 >"$tmp/.pom.sha256"
  rm -rf "$KAFKA_LIBS"
  mv "$tmp" "$KAFKA_LIBS"
  exec 8>&-
  kafka_libs_ok || die "Maven finished but expected Kafka jars are missing in $KAFKA_LIBS (see $MVN_LOG)"
  say "kafka: resolved $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars in $(($(now) - t0))s"
}

new_cluster_id() {  # base64url (no padding) of 16 random bytes, not starting with '-'
  "$PYTHON" -c '
import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    if not s.startswith("-"):
        print(s)
        break
'
}

# JAAS line of a PLAIN listener: one user_<name>="<password>" per NEARLINE_KAFKA_SASL_USERS entry
kafka_plain_jaas() {
  local entry user pass users=""
  IFS=',' read -ra entries <<<"$KAFKA_SASL_USERS"
  for entry in "${entries[@]}"; do
    user="${entry%%:*}"; pass="${entry#*:}"
    [[ "$entry" == *:* && "$user" =~ ^[A-Za-z0-9._-]+$ && "$pass" =~ ^[A-Za-z0-9._-]+$ ]] ||
      die "NEARLINE_KAFKA_SASL_USERS: expected user:password pairs of [A-Za-z0-9._-], got '$user:...'"
    users+=" user_$user=\"$pass\""
  done
  printf 'org.apache.kafka.common.security.plain.PlainLoginModule required%s;' "$users"
}

write_kafka_props() {
  local listeners="PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT"
  local protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  local extra=""
  if [[ -n "$KAFKA_SASL_PORT$KAFKA_SASL_SSL_PORT" ]]; then
    [[ -n "$KAFKA_SASL_USERS" ]] || die "a SASL port needs NEARLINE_KAFKA_SASL_USERS (user:password,...)"
    extra+="sasl.enabled.mechanisms=PLAIN"$'\n'
  fi
  if [[ -n "$KAFKA_SSL_PORT$KAFKA_SASL_SSL_PORT" ]]; then
    [[ -f "$KAFKA_SSL_PEM" ]] || die "a TLS port needs NEARLINE_KAFKA_SSL_PEM (key + certificate chain, PEM)"
    extra+="ssl.keystore.type=PEM"$'\n'"ssl.keystore.location=$KAFKA_SSL_PEM"$'\n'
  fi
  if [[ -n "$KAFKA_SASL_PORT" ]]; then
    listeners+=",SASL://$KAFKA_HOST:$KAFKA_SASL_PORT"
    protocols+=",SASL:SASL_PLAINTEXT"
    extra+="listener.name.sasl.plain.sasl.jaas.config=$(kafka_plain_jaas)"$'\n'
  fi
  if [[ -n "$KAFKA_SSL_PORT" ]]; then
    listeners+=",SSL://$KAFKA_HOST:$KAFKA_SSL_PORT"
    protocols+=",SSL:SSL"
  fi
  if [[ -n "$KAFKA_SASL_SSL_PORT" ]]; then
    listeners+=",SASL_SSL://$KAFKA_HOST:$KAFKA_SASL_SSL_PORT"
    protocols+=",SASL_SSL:SASL_SSL"
    extra+="listener.name.sasl_ssl.plain.sasl.jaas.config=$(kafka_plain_jaas)"$'\n'
  fi
  (umask 077 && : >"$KAFKA_PROPS")  # may hold SASL passwords
  cat >"$KAFKA_PROPS" <<PROPS
# generated by scripts/services.sh; recreated on every start
process.roles=broker,controller
node.id=$KAFKA_NODE_ID
controller.quorum.voters=$KAFKA_QUORUM_VOTERS
listeners=$listeners,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=$listeners
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
${extra}log.dirs=$KAFKA_DATA
num.partitions=1
default.replication.factor=$KAFKA_REPLICATION
min.insync.replicas=1
# the app creates its topics explicitly, with the partition count it needs
auto.create.topics.enable=false
offsets.topic.replication.factor=$KAFKA_REPLICATION
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=$KAFKA_REPLICATION
transaction.state.log.min.isr=$KAFKA_MIN_ISR
transaction.state.log.num.partitions=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=24
PROPS
}

kafka_java_opts() {
  # shellcheck disable=SC2206  # heap opts are deliberately word-split
  JAVA_OPTS=($KAFKA_HEAP_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15
    -Djava.awt.headless=true "-Dlog4j.configuration=file:$KAFKA_LOG4J"
    "-Dkafka.logs.dir=$STATE/kafka-logs")
}

start_kafka() {
  local pid
  if pid="$(live_pid "$KAFKA_PID" "$KAFKA_MATCH")"; then
    check_same_ports kafka "$KAFKA_PORTFILE" "$pid" "$KAFKA_PORT $KAFKA_CONTROLLER_PORT"
    if port_answers "$KAFKA_HOST" "$KAFKA_PORT"; then
      say "kafka: already running (pid $pid, $KAFKA_HOST:$KAFKA_PORT)"
      return 0
    fi
    say "kafka: process $pid is up but not answering yet; waiting"
    kafka_wait "$pid" || exit 1
    say "kafka: ready (pid $pid, $KAFKA_HOST:$KAFKA_PORT)"
    return 0
  fi
  rm -f "$KAFKA_PID" "$KAFKA_PORTFILE"

  command -v java >/dev/null 2>&1 ||
    die "java not found (install OpenJDK 17: apt-get install -y openjdk-17-jre-headless)"
  local p
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" $KAFKA_SASL_PORT $KAFKA_SSL_PORT $KAFKA_SASL_SSL_PORT; do
    if port_busy "$KAFKA_HOST" "$p"; then
      die "port $p is already in use by another process"
    fi
  done

  kafka_resolve_libs

  local t0 cluster_id
  t0=$(now)
  if [[ "$KAFKA_KEEP_DATA" == 1 && -f "$KAFKA_DATA/meta.properties" ]]; then
    # a restart: same storage, cluster id, topics and committed offsets
    mkdir -p "$STATE/kafka-logs"
    write_kafka_props
    kafka_java_opts
    printf '=== %s: reusing KRaft storage in %s (%s)\n' "$(date -Is)" "$KAFKA_DATA" \
      "$(grep '^cluster.id=' "$KAFKA_DATA/meta.properties" || true)" >>"$KAFKA_LOG"
  else
    rm -rf "$KAFKA_DATA" "$STATE/kafka-logs"
    mkdir -p "$KAFKA_DATA" "$STATE/kafka-logs"
    write_kafka_props
    kafka_java_opts
    cluster_id="${KAFKA_CLUSTER_ID:-$(new_cluster_id)}"
    : >"$KAFKA_LOG"
    printf '=== %s: formatting fresh KRaft storage, cluster id %s\n' "$(date -Is)" "$cluster_id" >>"$KAFKA_LOG"
    if ! timeout 120 java -Xmx256m "-Dlog4j.configuration=file:$KAFKA_LOG4J" -cp "$KAFKA_LIBS/*" \
      kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_PROPS" --ignore-formatted \
      </dev/null >>"$KAFKA_LOG" 2>&1 9>&-; then
      printf 'error: formatting Kafka storage failed (log: %s)\n' "$KAFKA_LOG" >&2
      log_tail "$KAFKA_LOG" 40
      exit 1
    fi
  fi
  printf '=== %s: starting kafka.Kafka %s\n' "$(date -Is)" "$KAFKA_VERSION" >>"$KAFKA_LOG"
  spawn "$KAFKA_PID" "$KAFKA_LOG" java "${JAVA_OPTS[@]}" -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_PROPS"
  pid="$(cat "$KAFKA_PID")"
  echo "$KAFKA_PORT $KAFKA_CONTROLLER_PORT" >"$KAFKA_PORTFILE"
  say "kafka: started pid $pid, waiting up to ${KAFKA_START_TIMEOUT}s for $KAFKA_HOST:$KAFKA_PORT"
  if ! kafka_wait "$pid"; then
    stop_pid kafka "$pid"
    rm -f "$KAFKA_PID" "$KAFKA_PORTFILE"
    exit 1
  fi
  say "kafka: ready on $KAFKA_HOST:$KAFKA_PORT (pid $pid, controller port $KAFKA_CONTROLLER_PORT, $(($(now) - t0))s)"
}

# ---------------------------------------------------------------- redis

REDIS_MATCH="redis-server"
REDIS_SERVER=""

find_redis_server() {
  REDIS_SERVER="$(command -v redis-server 2>/dev/null || true)"
  [[ -z "$REDIS_SERVER" && -x /usr/bin/redis-server ]] && REDIS_SERVER=/usr/bin/redis-server
  [[ -n "$REDIS_SERVER" ]]
}

install_redis() {
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    die "redis-server not found (install it: sudo apt-get install -y redis-server)"
  fi
  local log="$STATE/apt-redis.log"
  say "redis: redis-server not found; installing with apt-get (log: $log)"
  if ! { timeout 600 apt-get update &&
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y --no-install-recommends \
      redis-server redis-tools; } </dev/null >"$log" 2>&1 9>&-; then
    tail -n 20 "$log" >&2 || true
    die "apt-get install redis-server failed (see $log)"
  fi
  # On a machine with systemd the package starts its own daemon on 6379; ours is separate.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
    say "redis: stopping the system redis-server service the package just started"
    systemctl stop redis-server >/dev/null 2>&1 || true
  fi
  find_redis_server || die "redis-server still not found after apt-get install (see $log)"
}

redis_ping() {
  if command -v redis-cli >/dev/null 2>&1; then
    [[ "$(timeout 5 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" == "PONG" ]]
  else
    timeout 10 "$PYTHON" - "$REDIS_HOST" "$REDIS_PORT" <<'PY' >/dev/null 2>&1
import sys, redis
r = redis.Redis(host=sys.argv[1], port=int(sys.argv[2]), socket_timeout=3, socket_connect_timeout=3)
sys.exit(0 if r.ping() else 1)
PY
  fi
}

redis_wait() {  # redis_wait PID
  local pid="$1" deadline
  deadline=$(($(now) + REDIS_START_TIMEOUT))
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      printf 'error: redis-server (pid %s) exited during startup (log: %s)\n' "$pid" "$REDIS_LOG" >&2
      log_tail "$REDIS_LOG" 30
      rm -f "$REDIS_PID" "$REDIS_PORTFILE"
      exit 1
    fi
    redis_ping && return 0
    if (($(now) >= deadline)); then
      printf 'error: Redis did not answer PING on %s:%s within %ss (log: %s)\n' \
        "$REDIS_HOST" "$REDIS_PORT" "$REDIS_START_TIMEOUT" "$REDIS_LOG" >&2
      log_tail "$REDIS_LOG" 30
      return 1
    fi
    sleep 0.2
  done
}

start_redis() {
  local pid
  if pid="$(live_pid "$REDIS_PID" "$REDIS_MATCH")"; then
    check_same_ports redis "$REDIS_PORTFILE" "$pid" "$REDIS_PORT"
    if redis_ping; then
      say "redis: already running (pid $pid, $REDIS_HOST:$REDIS_PORT)"
      return 0
    fi
    say "redis: process $pid is up but not answering yet; waiting"
    redis_wait "$pid" || exit 1
    say "redis: ready (pid $pid, $REDIS_HOST:$REDIS_PORT)"
    return 0
  fi
  rm -f "$REDIS_PID" "$REDIS_PORTFILE"

  find_redis_server || install_redis
  if port_busy "$REDIS_HOST" "$REDIS_PORT"; then
    die "port $REDIS_PORT is already in use by another process"
  fi

  rm -rf "$REDIS_DATA"
  mkdir -p "$REDIS_DATA"
  : >"$REDIS_LOG"
  spawn "$REDIS_PID" "$REDIS_LOG" "$REDIS_SERVER" --bind "$REDIS_HOST" --port "$REDIS_PORT" \
    --daemonize no --save '' --appendonly no --dir "$REDIS_DATA" --protected-mode yes
  pid="$(cat "$REDIS_PID")"
  echo "$REDIS_PORT" >"$REDIS_PORTFILE"
  if ! redis_wait "$pid"; then
    stop_pid redis "$pid"
    rm -f "$REDIS_PID" "$REDIS_PORTFILE"
    exit 1
  fi
  say "redis: ready on $REDIS_HOST:$REDIS_PORT (pid $pid)"
}

# ---------------------------------------------------------------- stop / status / wait

stop_service() {  # stop_service NAME PIDFILE PORTFILE PATTERN
  local name="$1" pidfile="$2" portfile="$3" pattern="$4" pid
  if pid="$(live_pid "$pidfile" "$pattern")"; then
    say "$name: stopping pid $pid"
    stop_pid "$name" "$pid"
    rm -f "$pidfile" "$portfile"
    say "$name: stopped"
  else
    rm -f "$pidfile" "$portfile"
    say "$name: not running"
  fi
}

status_service() {  # status_service NAME PIDFILE PORTFILE PATTERN HOST PORT -> 0 running, 3 stopped
  local name="$1" pidfile="$2" portfile="$3" pattern="$4" host="$5" port="$6" pid
  if pid="$(live_pid "$pidfile" "$pattern")"; then
    port="$(recorded_port "$portfile" "$port")"
    if port_answers "$host" "$port"; then
      say "$name: running (pid $pid, port $port)"
    else
      say "$name: running (pid $pid, port $port not answering yet)"
    fi
    return 0
  fi
  if port_answers "$host" "$port"; then
    say "$name: stopped (port $port is in use by another process)"
  else
    say "$name: stopped (port $port)"
  fi
  return 3
}

wait_service() {  # wait_service NAME
  local pid
  case "$1" in
    kafka)
      pid="$(live_pid "$KAFKA_PID" "$KAFKA_MATCH")" || die "kafka is not running (start it: scripts/services.sh start kafka)"
      check_same_ports kafka "$KAFKA_PORTFILE" "$pid" "$KAFKA_PORT $KAFKA_CONTROLLER_PORT"
      kafka_wait "$pid" || exit 1
      say "kafka: ready on $KAFKA_HOST:$KAFKA_PORT (pid $pid)"
      ;;
    redis)
      pid="$(live_pid "$REDIS_PID" "$REDIS_MATCH")" || die "redis is not running (start it: scripts/services.sh start redis)"
      check_same_ports redis "$REDIS_PORTFILE" "$pid" "$REDIS_PORT"
      redis_wait "$pid" || exit 1
      say "redis: ready on $REDIS_HOST:$REDIS_PORT (pid $pid)"
      ;;
  esac
}

# ---------------------------------------------------------------- main

usage() {
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${BASH_SOURCE[0]}"
}

services_for() {  # services_for TARGET -> word list
  case "${1:-all}" in
    kafka) echo kafka ;;
    redis) echo redis ;;
    all | "") echo kafka redis ;;
    *) printf 'error: unknown service %s (expected kafka, redis or all)\n' "$1" >&2; exit 2 ;;
  esac
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  [[ $# -le 1 ]] || { usage >&2; exit 2; }
  require_uint NEARLINE_KAFKA_PORT "$KAFKA_PORT"
  require_uint NEARLINE_KAFKA_CONTROLLER_PORT "$KAFKA_CONTROLLER_PORT"
  require_uint NEARLINE_REDIS_PORT "$REDIS_PORT"
  local opt
  for opt in NEARLINE_KAFKA_SASL_PORT NEARLINE_KAFKA_SSL_PORT NEARLINE_KAFKA_SASL_SSL_PORT; do
    [[ -z "${!opt:-}" ]] || require_uint "$opt" "${!opt}"
  done
  [[ "$KAFKA_PORT" != "$KAFKA_CONTROLLER_PORT" ]] ||
    die "NEARLINE_KAFKA_PORT and NEARLINE_KAFKA_CONTROLLER_PORT must differ"
  local svcs s rc=0
  case "$cmd" in
    start)
      svcs="$(services_for "${1:-all}")"
      with_state_lock
      for s in $svcs; do "start_$s"; done
      ;;
    stop)
      svcs="$(services_for "${1:-all}")"
      with_state_lock
      for s in $svcs; do
        case "$s" in
          kafka) stop_service kafka "$KAFKA_PID" "$KAFKA_PORTFILE" "$KAFKA_MATCH" ;;
          redis) stop_service redis "$REDIS_PID" "$REDIS_PORTFILE" "$REDIS_MATCH" ;;
        esac
      done
      ;;
    restart)
      svcs="$(services_for "${1:-all}")"
      with_state_lock
      for s in $svcs; do
        case "$s" in
          kafka)
            stop_service kafka "$KAFKA_PID" "$KAFKA_PORTFILE" "$KAFKA_MATCH"
            KAFKA_KEEP_DATA=1 start_kafka
            ;;
          redis)
            stop_service redis "$REDIS_PID" "$REDIS_PORTFILE" "$REDIS_MATCH"
            start_redis
            ;;
        esac
      done
      ;;
    status)
      svcs="$(services_for "${1:-all}")"
      for s in $svcs; do
        case "$s" in
          kafka) status_service kafka "$KAFKA_PID" "$KAFKA_PORTFILE" "$KAFKA_MATCH" "$KAFKA_HOST" "$KAFKA_PORT" || rc=3 ;;
          redis) status_service redis "$REDIS_PID" "$REDIS_PORTFILE" "$REDIS_MATCH" "$REDIS_HOST" "$REDIS_PORT" || rc=3 ;;
        esac
      done
      return "$rc"
      ;;
    wait)
      svcs="$(services_for "${1:-all}")"
      for s in $svcs; do wait_service "$s"; done
      ;;
    -h | --help | help)
      usage
      ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
