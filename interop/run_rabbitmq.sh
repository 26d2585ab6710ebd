#!/usr/bin/env bash
# Debian's rabbitmq-server (3.10) on spare 127.0.0.1 ports, with its own data
# dir and the management plugin, for the interop suite.
#
#   interop/run_rabbitmq.sh start STATE_DIR    # prints two lines:
#       amqp://guest:guest@127.0.0.1:PORT/%2F
#       http://127.0.0.1:MANAGEMENT_PORT       (the management API)
#   interop/run_rabbitmq.sh restart STATE_DIR  # stop, then start on the same
#                                              # ports and data
#   interop/run_rabbitmq.sh stop STATE_DIR
#
# Installs Debian's rabbitmq-server first if it is missing (apt-get; its
# system service is not started). Runs the broker as the `rabbitmq` user (as
# root it switches with su).
set -euo pipefail

START_TIMEOUT_S=${RABBITMQ_START_TIMEOUT_S:-90}
STOP_TIMEOUT_S=${RABBITMQ_STOP_TIMEOUT_S:-30}

usage() { echo "usage: $0 start|restart|stop STATE_DIR" >&2; exit 2; }
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
    python3 - "$1" <<'PY'
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
except OSError:
    sys.exit(1)
PY
}

start_broker() {  # the ports are picked once and kept in $state for restarts
    mkdir -p "$state"/{mnesia,log,home}
    if [[ ! -f $state/ports ]]; then
        echo "$(free_port) $(free_port) $(free_port)" >"$state/ports"
    fi
    local port mport dist_port
    read -r port mport dist_port <"$state/ports"
    cat >"$state/rabbitmq.conf" <<CONF
listeners.tcp.1 = 127.0.0.1:$port
loopback_users = none
management.tcp.ip = 127.0.0.1
management.tcp.port = $mport
CONF
    echo "[rabbitmq_management]." >"$state/enabled_plugins"
    cat >"$state/env.sh" <<ENV
export RABBITMQ_NODE_PORT=$port
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODENAME=interop$port@localhost
export RABBITMQ_MNESIA_BASE=$state/mnesia
export RABBITMQ_LOG_BASE=$state/log
export RABBITMQ_CONFIG_FILE=$state/rabbitmq
export RABBITMQ_ENABLED_PLUGINS_FILE=$state/enabled_plugins
export RABBITMQ_DIST_PORT=$dist_port
export RABBITMQ_PID_FILE=$state/rabbit.pid
export ERL_EPMD_ADDRESS=127.0.0.1
export HOME=$state/home
ENV
    if [[ $(id -un) != rabbitmq ]]; then chown -R rabbitmq: "$state"; fi
    as_rabbitmq "exec setsid /usr/lib/rabbitmq/bin/rabbitmq-server" \
        >>"$state/server.out" 2>&1 </dev/null &
    local deadline=$((SECONDS + START_TIMEOUT_S))
    # The management listener comes up after the AMQP one: wait for both.
    until port_open "$port" && port_open "$mport"; do
        if ((SECONDS >= deadline)); then
            echo "rabbitmq did not listen on 127.0.0.1:$port and :$mport within ${START_TIMEOUT_S}s" >&2
            tail -20 "$state/server.out" >&2 || true
            exit 1
        fi
        sleep 0.2
    done
    echo "amqp://guest:guest@127.0.0.1:$port/%2F"
    echo "http://127.0.0.1:$mport"
}

stop_broker() {
    [[ -f $state/env.sh ]] || { echo "no broker state in $state" >&2; exit 1; }
    local port mport
    read -r port mport _ <"$state/ports"
    # SIGTERM is RabbitMQ's graceful stop (since 3.8), and much quicker than
    # booting rabbitmqctl's own Erlang VM to ask for one.
    local pid deadline=$((SECONDS + STOP_TIMEOUT_S))
    pid=$(cat "$state/rabbit.pid" 2>/dev/null || true)
    if [[ -n $pid ]]; then
        kill "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS >= deadline)); then
                echo "rabbitmq ($pid) still running after ${STOP_TIMEOUT_S}s: killing it" >&2
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.1
        done
    fi
    while port_open "$port" || port_open "$mport"; do
        if ((SECONDS >= deadline + 5)); then
            echo "rabbitmq still listening on 127.0.0.1:$port or :$mport" >&2
            exit 1
        fi
        sleep 0.2
    done
}

install_if_missing() {
    # Debian's package, installed without starting its system service (which
    # would take port 5672): policy-rc.d answers "not now" during the install.
    [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] && return
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    echo "installing Debian's rabbitmq-server" >&2
    local policy=/usr/sbin/policy-rc.d created=""
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod +x "$policy"
        created=1
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq rabbitmq-server >&2
    if [[ -n $created ]]; then $sudo rm -f "$policy"; fi
}

case $action in
start) install_if_missing; start_broker ;;
restart) stop_broker && start_broker >/dev/null ;;
stop) stop_broker ;;
*) usage ;;
esac
