# lib.sh - shell helpers for Sorter's benchmark scripts (sourced, not executed).
# Everything here touches only 127.0.0.1 and only processes whose PID the caller passes.
# shellcheck shell=bash

now() { echo "$EPOCHREALTIME"; }   # bash >= 5

# fdiv A B -> A/B with one decimal (awk: no bc dependency)
fdiv() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", a / b; else print "nan" }'; }
fsub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }

# port_free PORT -> 0 if nothing listens on 127.0.0.1:PORT
port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# free_port -> a port in 20000..59999 on which nothing listens now. A race with another
# program binding it meanwhile is possible but harmless: the server's start then fails loudly.
free_port() {
    local p i
    for i in $(seq 1 200); do
        p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
        if port_free "$p"; then echo "$p"; return 0; fi
    done
    return 1
}

# wait_port PORT SECONDS -> 0 once something listens on 127.0.0.1:PORT
wait_port() {
    local port=$1 limit=$2 i=0
    while ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        i=$((i + 1))
        [ "$i" -ge $((limit * 20)) ] && return 1
        sleep 0.05
    done
    return 0
}

# stop_pid PID [SECONDS]: SIGTERM one PID, wait, then SIGKILL that same PID if still alive.
stop_pid() {
    local pid=$1 limit=${2:-10} i=0
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do
        i=$((i + 1))
        if [ "$i" -ge $((limit * 10)) ]; then
            kill -9 "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
}
