#!/bin/sh
# demo.sh - Sorter in one command: from the repository root of a clone, as root on a fresh
# Debian machine, installs the packages, builds into build/, starts sorterd on a free loopback
# port with a spool in a temp dir, sends it one message with swaks, shows the queue and the
# stored message, stops sorterd, and says where everything is. Only 127.0.0.1 is used; the
# only process stopped is the sorterd this script started.
set -eu

cd "$(dirname "$0")/.."
top=$(pwd)

say() { printf '\n==== %s ====\n' "$*"; }

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

say "3. start sorterd"
DEMO=$(mktemp -d /tmp/sorter-demo.XXXXXX)
chmod 755 "$DEMO"   # the spool below it belongs to the unprivileged user sorterd drops to
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
if getent passwd sorter >/dev/null 2>&1; then RUNAS=sorter; else RUNAS=$(id -un); fi
cat > "$DEMO/sorter.conf" <<CONF
# demo configuration written by contrib/demo.sh (every key: contrib/sorter.conf.example)
hostname = mx.example.test
spool_dir = $DEMO/spool
user = $RUNAS
listen = 127.0.0.1:$PORT mx
local_domains = example.test
workers = 1
log = stderr
CONF
"$BUILD/sorterd" -t -c "$DEMO/sorter.conf"
"$BUILD/sorterd" -c "$DEMO/sorter.conf" 2> "$DEMO/sorterd.log" &
SD_PID=$!
stop_sorterd() {
    if kill -0 "$SD_PID" 2>/dev/null; then
        kill -TERM "$SD_PID" 2>/dev/null || true
        i=0
        while kill -0 "$SD_PID" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        kill -0 "$SD_PID" 2>/dev/null && kill -KILL "$SD_PID" 2>/dev/null || true
    fi
    wait "$SD_PID" 2>/dev/null || true
}
trap stop_sorterd EXIT
i=0
# wait for the listener without connecting (a probe would be a session in the log)
until ss -Hltn "sport = :$PORT" | grep -q .; do
    i=$((i + 1))
    if [ $i -ge 100 ] || ! kill -0 "$SD_PID" 2>/dev/null; then
        echo "demo.sh: sorterd did not start; its log:" >&2
        cat "$DEMO/sorterd.log" >&2
        exit 1
    fi
    sleep 0.1
done
echo "sorterd (pid $SD_PID) listens on 127.0.0.1:$PORT, spool $DEMO/spool"

say "4. send one message with swaks"
swaks --server 127.0.0.1 --port "$PORT" --helo client.remote.test \
    --from alice@remote.test --to bob@example.test \
    --header "Subject: hello from the Sorter demo" \
    --body "This message went into Sorter's durable queue." | tee "$DEMO/swaks.out"
QID=$(sed -n 's/.*queued as \([0-9A-Z]\{12\}\).*/\1/p' "$DEMO/swaks.out" | head -n 1)
[ -n "$QID" ] || { echo "demo.sh: the message was not queued" >&2; exit 1; }

say "5. sorterctl queue"
"$BUILD/sorterctl" -c "$DEMO/sorter.conf" queue

say "6. sorterctl show $QID"
"$BUILD/sorterctl" -c "$DEMO/sorter.conf" show "$QID"

# ---- 7. delivery to a mailbox node (to come) ----
# When the queue manager delivers, this step will start a private Dovecot LMTP node on another
# loopback port (users bob@example.test, ...), add user_map/node_map entries pointing at it,
# wait until the queue is empty and show the message in bob's Maildir.

say "8. stop sorterd"
stop_sorterd
trap - EXIT
echo "sorterd stopped. Its log:"
cat "$DEMO/sorterd.log"

say "files"
QFILE=$(find "$DEMO/spool" -type f -name "$QID" | head -n 1)
cat <<MSG
config        $DEMO/sorter.conf
spool         $DEMO/spool   (the message: ${QFILE:-gone from the spool})
sorterd log   $DEMO/sorterd.log
build         $BUILD   (sorterd, sorterctl)
Remove the demo files with: rm -rf $DEMO
MSG
