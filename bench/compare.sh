#!/usr/bin/env bash
# Benchmark amqpy against RabbitMQ (Debian's rabbitmq-server) side by side in one
# run, with the shared verifying load generator (../shared/bench).
#
#   bench/compare.sh [amqpbench options...]     e.g.  --cases b_auto,b_ack --runs 3
#
# Starts amqpy and RabbitMQ on free loopback ports with throw-away data folders,
# runs amqpbench in compare mode (A = amqpy, B = RabbitMQ, so A/B is amqpy's
# ratio), and stops both. Needs rabbitmq-server installed (apt-get install
# rabbitmq-server) and amqpy installed in .venv.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BENCH="${AMQPBENCH_DIR:-$ROOT/../shared/bench}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
WORK="$(mktemp -d /tmp/amqpy-bench.XXXXXX)"
# The Erlang VM (beam) of our RabbitMQ node: its name is only in its environment.
beam_pids() {
  for pid in $(pgrep beam.smp || true); do
    grep -qa "amqpybench-$$@" "/proc/$pid/environ" 2>/dev/null && echo "$pid"
  done
}
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cleanup() {
  [ -n "${AMQPY_PID:-}" ] && kill "$AMQPY_PID" 2>/dev/null || true
  if [ -n "${RABBIT_PID:-}" ]; then
    kill "$RABBIT_PID" 2>/dev/null || true
    for pid in $(beam_pids); do kill "$pid" 2>/dev/null || true; done
  fi
  wait 2>/dev/null || true
  [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

AMQPY_PORT=$(free_port)
RABBIT_PORT=$(free_port)
DIST_PORT=$(free_port)

"$PY" -m amqpy server --port "$AMQPY_PORT" --data-dir "$WORK/amqpy" --no-management --log-level warning \
  2>"$WORK/amqpy.log" &
AMQPY_PID=$!

mkdir -p "$WORK/rabbit/mnesia" "$WORK/rabbit/log"
echo "listeners.tcp.1 = 127.0.0.1:$RABBIT_PORT" > "$WORK/rabbit/rabbitmq.conf"
echo "[]." > "$WORK/rabbit/enabled_plugins"
# Debian's rabbitmq-server drops to the rabbitmq user when started as root.
chmod 755 "$WORK"
if id rabbitmq >/dev/null 2>&1; then chown -R rabbitmq: "$WORK/rabbit"; fi
(
  export RABBITMQ_NODENAME="amqpybench-$$@localhost" RABBITMQ_NODE_PORT="$RABBIT_PORT"
  export RABBITMQ_MNESIA_BASE="$WORK/rabbit/mnesia" RABBITMQ_LOG_BASE="$WORK/rabbit/log"
  export RABBITMQ_CONFIG_FILE="$WORK/rabbit/rabbitmq" RABBITMQ_DIST_PORT="$DIST_PORT"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$WORK/rabbit/enabled_plugins" HOME="$WORK/rabbit"
  export ERL_EPMD_ADDRESS=127.0.0.1
  # Debian's wrapper switches user with su, whose PAM limits cut the file
  # descriptors to 1024 (RabbitMQ then allows ~830 sockets and fails g_conns):
  # switch without PAM instead, keeping this shell's (raised) limit.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1 && command -v setpriv >/dev/null \
    && [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
      /usr/lib/rabbitmq/bin/rabbitmq-server >"$WORK/rabbit/out.log" 2>&1
  fi
  exec rabbitmq-server >"$WORK/rabbit/out.log" 2>&1
) &
RABBIT_PID=$!

wait_port() {
  for _ in $(seq 1 600); do
    if "$PY" -c "import socket,sys; s=socket.create_connection(('127.0.0.1',$1),1); s.sendall(b'AMQP\x00\x00\x09\x01'); sys.exit(0 if s.recv(1) else 1)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "broker on port $1 did not come up" >&2; return 1
}
wait_port "$AMQPY_PORT"
wait_port "$RABBIT_PORT"
# The Erlang VM's OS pid (the beam process), for CPU and RSS figures.
BEAM_PID=$(beam_pids | head -1)

echo "amqpy (A) on $AMQPY_PORT pid $AMQPY_PID; RabbitMQ (B) on $RABBIT_PORT pid $BEAM_PID" >&2
AMQPBENCH_PYTHON="$PY" "$BENCH/run.sh" \
  "amqp://guest:guest@127.0.0.1:$AMQPY_PORT/" "amqp://guest:guest@127.0.0.1:$RABBIT_PORT/" \
  --broker-pid "$AMQPY_PID" --broker-pid-b "$BEAM_PID" "$@"
