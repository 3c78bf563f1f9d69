#!/bin/sh
# run.sh [-j JOBS] BUILD_DIR [names...] - runs Sorter's integration suite against the sorterd
# and sorterctl built in BUILD_DIR (each test starts its own private daemon on a free
# 127.0.0.1 port). Names pick what to run (e.g. test_smtp.SMTPTest); without them every
# test_*.py module runs, JOBS modules side by side (default 1; contrib/test.sh uses 2), each
# module's output printed whole and in order. The run ends with the seconds per module and
# the 15 slowest tests (timed.py). Exit status: 0 when every test passed.
set -eu
jobs=1
if [ "${1:-}" = -j ]; then
    [ $# -ge 2 ] || { echo "usage: $0 [-j JOBS] BUILD_DIR [names...]" >&2; exit 2; }
    jobs=$2
    shift 2
fi
case $jobs in
'' | *[!0-9]* | 0)
    echo "run.sh: -j needs a positive number" >&2
    exit 2
    ;;
esac
if [ $# -lt 1 ]; then
    echo "usage: $0 [-j JOBS] BUILD_DIR [names...]" >&2
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
exec python3 timed.py -j "$jobs" "$@"
