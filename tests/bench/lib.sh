# lib.sh - shell helpers for Sorter's benchmark scripts (sourced, not executed).
# Everything here touches only 127.0.0.0/8 and only processes whose PID the caller passes.
# HOST arguments default to 127.0.0.1; 127.0.0.2, 127.0.0.3, ... are local too (remote MXes).
# shellcheck shell=bash

now() { echo "$EPOCHREALTIME"; }   # bash >= 5
# settle: what earlier runs left dirty (a spool removed, a queue written) reaches the disk before
# the next timed run starts, so that no MTA's run pays for the one before it. The bench's own
# sync, between runs, never during one; each MTA under test gets the same.
settle() { sync; sleep 1; }

# slots_filled SPOOL [SECONDS] -> 0 once sorterd's start-up fill of SPOOL/slots is done: a fresh
# spool gets 1,024 free queue files (RECYCLE_PREFILL), made off the event loop while mail may
# already flow. A timed load starts after it, as on a sorterd that kept its slots from before:
# the fill is start-up work, paid once (each new file costs ext4 an inode allocation, which
# after another MTA's run has just deleted its queue files can take a millisecond of CPU).
slots_filled() {
    local i n=0
    for ((i = 0; i < ${2:-60} * 10; i++)); do
        n=$(find "$1/slots" -maxdepth 1 -type f 2>/dev/null | wc -l)
        [ "$n" -ge 1024 ] && return 0
        sleep 0.1
    done
    echo "slots/ of $1 holds $n queue files after ${2:-60}s, not 1024" >&2
    return 1
}

# fdiv A B -> A/B with one decimal (awk: no bc dependency)
fdiv() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", a / b; else print "nan" }'; }
fsub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }

# port_free PORT [HOST] -> 0 if nothing listens on HOST:PORT
port_free() {
    ! (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null
}

# free_port [HOST] -> a port below the kernel's ephemeral range (ip_local_port_range; 20000..59999
# if that leaves too few) on which nothing listens on HOST now: a load's own connections take
# their local ports from that range, and one that holds the port makes the server's bind fail
# (end-to-end lost a run so). A race with another program binding it meanwhile is possible but
# harmless: the server's start then fails loudly.
free_port() {
    local p i lo=20000 n=40000 eph
    eph=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 0)
    if [ "${eph:-0}" -ge 12000 ]; then lo=10000 n=$(( eph - 10000 )); fi
    for i in $(seq 1 200); do
        p=$(( lo + (RANDOM * 32768 + RANDOM) % n ))
        if port_free "$p" "${1:-127.0.0.1}"; then echo "$p"; return 0; fi
    done
    return 1
}

# wait_port PORT SECONDS [HOST] -> 0 once something listens on HOST:PORT
wait_port() {
    local port=$1 limit=$2 host=${3:-127.0.0.1} i=0
    while ! (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; do
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

# median_of N... -> the median (the mean of the middle two for an even count)
median_of() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# min_of N... / max_of N...
min_of() { printf '%s\n' "$@" | sort -g | head -n 1; }
max_of() { printf '%s\n' "$@" | sort -g | tail -n 1; }

# tree_pids PID -> PID and every process below it, now
tree_pids() {
    local pids=$1 frontier=$1 next p
    while [ -n "$frontier" ]; do
        next=""
        for p in $frontier; do
            next="$next $(cat /proc/"$p"/task/*/children 2>/dev/null | tr '\n' ' ')"
        done
        # shellcheck disable=SC2086,SC2116  # the splitting leaves nothing for no children
        frontier=$(echo $next)
        pids="$pids $frontier"
    done
    echo "$pids"
}

# tree_cpu PID -> CPU seconds (user + system) used so far by PID and every process below it,
# including children they have already reaped (cutime/cstime): an MTA's whole cost, whatever
# processes came and went. Reads /proc only.
tree_cpu() {
    local p tck
    tck=$(getconf CLK_TCK)
    for p in $(tree_pids "$1"); do
        # fields after the command name (which may hold spaces): utime is the 12th of them
        sed -e 's/^.*) //' "/proc/$p/stat" 2>/dev/null || true
    done | awk -v t="$tck" '{ s += $12 + $13 + $14 + $15 } END { printf "%.2f", s / t }'
}

# tree_switches PID -> the context switches (voluntary and not) made so far by every thread of
# PID and of every process below it that is still running: each is a sleep and a wake-up, the
# cost a device request adds beside its own (a thread waits for it). Threads that have ended
# are not counted: for a daemon whose threads live as long as it does.
tree_switches() {
    local p
    for p in $(tree_pids "$1"); do
        cat /proc/"$p"/task/*/status 2>/dev/null || true
    done | awk '/^(non)?voluntary_ctxt_switches:/ { s += $2 } END { print s + 0 }'
}

# dev_stat DIR -> "WRITES FLUSHES": the write and flush requests completed so far by the block
# device holding DIR (/sys/dev/block/MAJ:MIN/stat, fields 5 and 16), for every process of the
# machine; nothing for a DIR on no block device (tmpfs). The kernel counts each cache flush
# among the writes too (the empty write that asked for it): dev_per_msg takes it out.
dev_stat() {
    local f
    f=/sys/dev/block/$(stat -c '%Hd:%Ld' "$1" 2>/dev/null)/stat
    [ -r "$f" ] && awk 'NF >= 16 { print $5, $16 }' "$f"
    return 0
}

# dev_per_msg "BEFORE" "AFTER" MSGS -> ", device W data writes + F flushes per msg", or nothing
dev_per_msg() {
    [ -n "$1" ] && [ -n "$2" ] || return 0
    awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { split(a, x, " "); split(b, y, " ");
        f = y[2] - x[2]; w = y[1] - x[1] - f
        printf ", device %.2f data writes + %.2f flushes per msg", w / n, f / n }'
}

# cpu_stat -> "TOTAL STEAL IDLE": the machine's CPU time so far (user through steal on
# /proc/stat's cpu line: guest time is counted in user already), the part of it the hypervisor
# gave to others (steal) and the part no one used (idle and iowait), in ticks
cpu_stat() { awk '$1 == "cpu" { for (i = 2; i <= 9; i++) t += $i; print t, $9, $5 + $6; exit }' /proc/stat; }

# host_shares "BEFORE" "AFTER" -> ", host steal N% of CPU, idle M%": the shares of the
# machine's CPU time over the run that the hypervisor gave to other guests, and that no one
# used (low: the cores were the limit; high: the run waited on something else)
host_shares() {
    awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[1] - x[1]
        if (t > 0) printf ", host steal %.1f%% of CPU, idle %.1f%%", 100 * (y[2] - x[2]) / t,
            100 * (y[3] - x[3]) / t }'
}

# summary LABEL VALUES... -> "LABEL min/median/max: a / b / c"
summary() {
    local label=$1
    shift
    echo "$label min/median/max: $(min_of "$@") / $(median_of "$@") / $(max_of "$@")"
}
