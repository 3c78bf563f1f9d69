#!/bin/sh
# run.sh BUILD_DIR - runs Sorter's integration suite against the sorterd and sorterctl built in
# BUILD_DIR (each test starts its own private daemon on a free 127.0.0.1 port).
# Exit status: the suite's. Extra arguments are passed to unittest (e.g. test_smtp.SMTPTest).
set -eu
if [ $# -lt 1 ]; then
    echo "usage: $0 BUILD_DIR [unittest args...]" >&2
    exit 2
fi
SORTER_BUILD=$(cd "$1" && pwd)
export SORTER_BUILD
shift
for prog in sorterd sorterctl; do
    if [ ! -x "$SORTER_BUILD/$prog" ]; then
        echo "run.sh: no $prog in $SORTER_BUILD (build it first)" >&2
        exit 1
    fi
done
cd "$(dirname "$0")"
if [ $# -gt 0 ]; then
    exec python3 -m unittest -v "$@"
fi
exec python3 -m unittest discover -v -s . -p 'test_*.py'
