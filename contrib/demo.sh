#!/bin/sh
# demo.sh - Sorter in one command: from the repository root of a clone, as root on a fresh
# Debian machine, installs the packages, builds into build/, starts two private Dovecot LMTP
# mailbox nodes (node A: alice, carol; node B: bob, dave) and sorterd on free loopback ports,
# builds user_map and node_map with sortermap, sends one message to alice and one to bob with
# swaks, waits until each has landed in its user's Maildir on the right node, prints where
# and the first lines, then stops everything it started, by PID. Only 127.0.0.1 is used.
# Everything lives in one temp dir, printed at the end.
set -eu

cd "$(dirname "$0")/.."
top=$(pwd)

say() { printf '\n==== %s ====\n' "$*"; }
die() { echo "demo.sh: $*" >&2; exit 1; }
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# wait_listen PORT PID: until something listens on 127.0.0.1:PORT (without connecting: a
# probe would be a session in the log), or PID is gone, or 10 s pass
wait_listen() {
    i=0
    until ss -Hltn "sport = :$1" | grep -q .; do
        i=$((i + 1))
        if [ $i -ge 100 ] || ! kill -0 "$2" 2>/dev/null; then
            return 1
        fi
        sleep 0.1
    done
}
# stop_pid PID: SIGTERM, wait up to 10 s, then SIGKILL that same PID
stop_pid() {
    [ -n "$1" ] || return 0
    kill -0 "$1" 2>/dev/null || return 0
    kill -TERM "$1" 2>/dev/null || true
    i=0
    while kill -0 "$1" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    kill -0 "$1" 2>/dev/null && kill -KILL "$1" 2>/dev/null || true
}

[ "$(id -u)" = 0 ] || die "run as root (it installs packages, and Dovecot runs as nobody)"

say "1. packages (contrib/setup.sh)"
sh contrib/setup.sh

say "2. build (autoreconf, configure, make in build/)"
mkdir -p m4
autoreconf -fi
mkdir -p build
if [ ! -f build/config.status ]; then
    (cd build && ../configure -q)
fi
make -C build -j2
BUILD=$top/build

DEMO=$(mktemp -d /tmp/sorter-demo.XXXXXX)
chmod 755 "$DEMO"   # reached by nobody (Dovecot) and by the user sorterd drops to
SD_PID="" NODE_PIDS=""
stop_all() {
    if [ -n "$SD_PID" ]; then
        stop_pid "$SD_PID"
        wait "$SD_PID" 2>/dev/null || true
        SD_PID=""
    fi
    for p in $NODE_PIDS; do stop_pid "$p"; done
    NODE_PIDS=""
}
trap stop_all EXIT
trap 'exit 130' INT TERM

say "3. two Dovecot LMTP mailbox nodes"
# start_node NAME PORT USER...: a rootless Dovecot (every process runs as nobody), LMTP only,
# passwd-file users, Maildir under $DEMO/NAME/mail; unknown users get 550 5.1.1 at RCPT.
NOBODY_GROUP=$(id -gn nobody)
start_node() {
    name=$1 nport=$2
    shift 2
    nd=$DEMO/$name
    mkdir -p "$nd/run" "$nd/state" "$nd/mail"
    cat > "$nd/dovecot.conf" <<CONF
# demo mailbox node written by contrib/demo.sh
instance_name = sorter-demo-$name
base_dir = $nd/run
state_dir = $nd/state
protocols = lmtp
listen = 127.0.0.1
ssl = no
log_path = $nd/dovecot.log
default_internal_user = nobody
default_internal_group = $NOBODY_GROUP
default_login_user = nobody
mail_uid = nobody
mail_gid = $NOBODY_GROUP
first_valid_uid = 1
mail_location = maildir:$nd/mail/%n/Maildir
postmaster_address = postmaster@example.test
hostname = $name.example.test
passdb {
  driver = passwd-file
  args = $nd/users
}
userdb {
  driver = passwd-file
  args = $nd/users
  default_fields = home=$nd/mail/%n
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $nport
  }
  unix_listener lmtp {
    mode = 0
  }
}
service anvil {
  chroot =
}
service auth {
  user = nobody
}
service auth-worker {
  user = nobody
}
service imap-login {
  chroot =
}
service pop3-login {
  chroot =
}
service submission-login {
  chroot =
}
CONF
    : > "$nd/users"
    for u in "$@"; do echo "$u@example.test:{PLAIN}x::::::" >> "$nd/users"; done
    chown -R "nobody:$NOBODY_GROUP" "$nd"
    # the master daemonizes and writes run/master.pid
    setpriv --reuid=nobody --regid="$NOBODY_GROUP" --clear-groups \
        dovecot -c "$nd/dovecot.conf" > "$nd/start.out" 2>&1 \
        || { cat "$nd/start.out" >&2; die "dovecot $name did not start"; }
    i=0
    while [ ! -s "$nd/run/master.pid" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    npid=$(tr -d ' \n' < "$nd/run/master.pid")
    NODE_PIDS="$NODE_PIDS $npid"
    wait_listen "$nport" "$npid" || { cat "$nd/dovecot.log" >&2; die "dovecot $name did not listen"; }
    echo "$name: Dovecot LMTP on 127.0.0.1:$nport (master pid $npid), users: $*"
}
PORT_A=$(free_port)
start_node node-a "$PORT_A" alice carol
PORT_B=$(free_port)
[ "$PORT_B" != "$PORT_A" ] || PORT_B=$(free_port)
start_node node-b "$PORT_B" bob dave

say "4. maps, built with sortermap"
mkdir -p "$DEMO/maps"
cat > "$DEMO/maps/user_map" <<MAP
# address -> node name
alice@example.test   node-a
carol@example.test   node-a
bob@example.test     node-b
dave@example.test    node-b
MAP
cat > "$DEMO/maps/node_map" <<MAP
# node name -> LMTP endpoints, tried in order
node-a   lmtp:[127.0.0.1]:$PORT_A
node-b   lmtp:[127.0.0.1]:$PORT_B
MAP
"$BUILD/sortermap" "$DEMO/maps/user_map"
"$BUILD/sortermap" "$DEMO/maps/node_map"
chmod 644 "$DEMO/maps/"*
for u in alice bob; do
    node=$("$BUILD/sortermap" -q "$u@example.test" "hash:$DEMO/maps/user_map")
    echo "$u@example.test -> $node -> $("$BUILD/sortermap" -q "$node" "hash:$DEMO/maps/node_map")"
done

say "5. start sorterd"
PORT=$(free_port)
if getent passwd sorter >/dev/null 2>&1; then RUNAS=sorter; else RUNAS=$(id -un); fi
cat > "$DEMO/sorter.conf" <<CONF
# demo configuration written by contrib/demo.sh (every key: contrib/sorter.conf.example)
hostname = mx.example.test
spool_dir = $DEMO/spool
user = $RUNAS
listen = 127.0.0.1:$PORT mx
local_domains = example.test
user_map = hash:$DEMO/maps/user_map
node_map = hash:$DEMO/maps/node_map
workers = 1
queue_run_delay = 2
minimal_backoff_time = 2
maximal_backoff_time = 10
log = stderr
CONF
"$BUILD/sorterd" -t -c "$DEMO/sorter.conf"
"$BUILD/sorterd" -c "$DEMO/sorter.conf" 2> "$DEMO/sorterd.log" &
SD_PID=$!
if ! wait_listen "$PORT" "$SD_PID"; then
    cat "$DEMO/sorterd.log" >&2
    die "sorterd did not start; its log is above"
fi
echo "sorterd (pid $SD_PID) listens on 127.0.0.1:$PORT, spool $DEMO/spool"

say "6. one message to alice (node A) and one to bob (node B), with swaks"
for u in alice bob; do
    swaks --server 127.0.0.1 --port "$PORT" --helo client.remote.test \
        --from friend@remote.test --to "$u@example.test" \
        --header "Subject: hello $u, from the Sorter demo" \
        --body "Dear $u, this message went through sorterd to your mailbox node." \
        > "$DEMO/swaks-$u.out" 2>&1 || { cat "$DEMO/swaks-$u.out" >&2; die "swaks to $u failed"; }
    qid=$(sed -n 's/.*queued as \([0-9A-Z]\{12\}\).*/\1/p' "$DEMO/swaks-$u.out" | head -n 1)
    [ -n "$qid" ] || { cat "$DEMO/swaks-$u.out" >&2; die "the message to $u was not queued"; }
    echo "$u@example.test: $(grep -m1 'queued as' "$DEMO/swaks-$u.out" | sed 's/^ *<[-~]* *//')"
done

say "7. wait for delivery"
# landed USER NODE -> the path of the first message in USER's Maildir on NODE, if any
landed() {
    find "$DEMO/$2/mail/$1/Maildir/new" "$DEMO/$2/mail/$1/Maildir/cur" -type f 2>/dev/null | head -n 1
}
i=0
until [ -n "$(landed alice node-a)" ] && [ -n "$(landed bob node-b)" ]; do
    i=$((i + 1))
    if [ $i -ge 300 ]; then
        "$BUILD/sorterctl" -c "$DEMO/sorter.conf" queue || true
        tail -20 "$DEMO/sorterd.log" >&2
        die "not delivered within 30 s; the queue and sorterd's log are above"
    fi
    sleep 0.1
done
for pair in alice:node-a bob:node-b; do
    u=${pair%%:*} node=${pair#*:}
    f=$(landed "$u" "$node")
    printf '\n%s@example.test landed on %s in\n  %s\nfirst lines:\n' "$u" "$node" "$f"
    head -n 20 "$f" | sed 's/^/  | /'
done
echo
grep 'status=' "$DEMO/sorterd.log" || true
echo
"$BUILD/sorterctl" -c "$DEMO/sorter.conf" queue

say "8. stop sorterd and the nodes (by PID)"
stop_all
trap - EXIT
echo "stopped."

say "files"
cat <<MSG
config        $DEMO/sorter.conf
maps          $DEMO/maps/user_map, $DEMO/maps/node_map (and their .db)
node A        $DEMO/node-a   (Maildirs under mail/, log dovecot.log)
node B        $DEMO/node-b
sorterd log   $DEMO/sorterd.log
build         $BUILD   (sorterd, sorterctl, sortermap)
Remove the demo files with: rm -rf $DEMO
MSG
