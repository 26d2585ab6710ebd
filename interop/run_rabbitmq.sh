#!/usr/bin/env bash
# Debian's rabbitmq-server (3.10) on a spare 127.0.0.1 port, with its own data
# dir, for the interop suite.
#
#   interop/run_rabbitmq.sh start STATE_DIR   # prints amqp://guest:guest@127.0.0.1:PORT/%2F
#   interop/run_rabbitmq.sh stop STATE_DIR
#
# Runs the broker as the `rabbitmq` user (as root it switches with su).
set -euo pipefail

START_TIMEOUT_S=${RABBITMQ_START_TIMEOUT_S:-90}
STOP_TIMEOUT_S=${RABBITMQ_STOP_TIMEOUT_S:-30}

usage() { echo "usage: $0 start|stop STATE_DIR" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
action=$1
state=$(realpath -m "$2")

as_rabbitmq() {  # as_rabbitmq COMMAND...: run with $state/env.sh sourced
    local cmd=". '$state/env.sh' && $*"
    if [[ $(id -un) == rabbitmq ]]; then
        sh -c "$cmd"
    else
        su rabbitmq -s /bin/sh -c "$cmd"
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_open() {  # port_open PORT: one bounded connect attempt
    python3 - "$1" <<'EOF'
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
except OSError:
    sys.exit(1)
EOF
}

case $action in
start)
    mkdir -p "$state"/{mnesia,log,home}
    port=$(free_port)
    dist_port=$(free_port)
    node="interop$port@localhost"
    cat >"$state/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$port
loopback_users = none
EOF
    echo "[]." >"$state/enabled_plugins"
    cat >"$state/env.sh" <<EOF
export RABBITMQ_NODE_PORT=$port
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODENAME=$node
export RABBITMQ_MNESIA_BASE=$state/mnesia
export RABBITMQ_LOG_BASE=$state/log
export RABBITMQ_CONFIG_FILE=$state/rabbitmq
export RABBITMQ_ENABLED_PLUGINS_FILE=$state/enabled_plugins
export RABBITMQ_DIST_PORT=$dist_port
export RABBITMQ_PID_FILE=$state/rabbit.pid
export ERL_EPMD_ADDRESS=127.0.0.1
export HOME=$state/home
EOF
    echo "$port" >"$state/port"
    if [[ $(id -un) != rabbitmq ]]; then chown -R rabbitmq: "$state"; fi
    as_rabbitmq "exec setsid /usr/lib/rabbitmq/bin/rabbitmq-server" \
        >"$state/server.out" 2>&1 </dev/null &
    deadline=$((SECONDS + START_TIMEOUT_S))
    until port_open "$port"; do
        if ((SECONDS >= deadline)); then
            echo "rabbitmq did not listen on 127.0.0.1:$port within ${START_TIMEOUT_S}s" >&2
            tail -20 "$state/server.out" >&2 || true
            exit 1
        fi
        sleep 0.2
    done
    echo "amqp://guest:guest@127.0.0.1:$port/%2F"
    ;;
stop)
    [[ -f $state/env.sh ]] || { echo "no broker state in $state" >&2; exit 1; }
    port=$(cat "$state/port")
    timeout "$STOP_TIMEOUT_S" bash -c "$(declare -f as_rabbitmq); state='$state'; \
        as_rabbitmq '/usr/lib/rabbitmq/bin/rabbitmqctl -q stop \"\$RABBITMQ_PID_FILE\"'" \
        >/dev/null 2>&1 || {
        # rabbitmqctl failed or hung: end the node by its pid file.
        if [[ -f $state/rabbit.pid ]]; then kill "$(cat "$state/rabbit.pid")" || true; fi
    }
    deadline=$((SECONDS + STOP_TIMEOUT_S))
    while port_open "$port"; do
        if ((SECONDS >= deadline)); then
            echo "rabbitmq still listening on 127.0.0.1:$port" >&2
            exit 1
        fi
        sleep 0.2
    done
    ;;
*) usage ;;
esac
