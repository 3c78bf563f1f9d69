#!/bin/sh
# test.sh - THE test command of Sorter: from the repository root of a clone, as root on a fresh
# Debian machine, installs what is needed, builds twice out of tree (build/ plain, build-asan/
# with AddressSanitizer and UndefinedBehaviorSanitizer), and runs for each the unit tests
# (Check) and the integration suite against a private sorterd (JOBS test modules side by
# side, default 2); then the fuzz targets briefly (JOBS at a time). Each step says how long
# the run has taken so far. Stops at the first failure with a non-zero exit. Only 127.0.0.0/8
# is ever used.
set -eu

cd "$(dirname "$0")/.."
JOBS=${JOBS:-2}

START=$(date +%s)
step() { printf '\n==== %s (at %d s) ====\n' "$*" $(($(date +%s) - START)); }
fail() { printf '\ntest.sh: FAILED: %s\n' "$*" >&2; exit 1; }

step "packages (contrib/setup.sh)"
if [ "$(id -u)" = 0 ]; then
    sh contrib/setup.sh || fail "contrib/setup.sh"
else
    echo "not root: skipping contrib/setup.sh (the packages must be installed already)"
fi

if [ -f config.status ]; then
    fail "the source tree is configured in place (config.status): run 'make distclean' first"
fi

step "autoreconf"
mkdir -p m4   # a fresh clone has no m4/ yet; aclocal wants it (ACLOCAL_AMFLAGS = -I m4)
autoreconf -fi || fail "autoreconf"

# build DIR [configure options...]: configure, make, make check (Check summaries printed)
build() {
    dir=$1
    shift
    step "$dir: configure $*"
    rm -rf "$dir"
    mkdir -p "$dir"
    (cd "$dir" && ../configure -q "$@") || fail "$dir: configure"
    step "$dir: make"
    make -C "$dir" -j"$JOBS" || fail "$dir: make"
    step "$dir: make check"
    if ! make -C "$dir" -j"$JOBS" check; then
        for log in "$dir"/tests/unit/*.log; do
            [ -f "$log" ] && { echo "---- $log"; cat "$log"; }
        done
        fail "$dir: make check"
    fi
    for log in "$dir"/tests/unit/check_*.log; do
        [ -f "$log" ] && grep -H -E '^[0-9]+%: Checks:' "$log" || true
    done
}

# integration DIR: the Python suite against DIR/sorterd
integration() {
    step "$1: integration tests"
    tests/integration/run.sh -j "$JOBS" "$1" || fail "$1: integration tests"
}

build build
integration build

build build-asan --enable-sanitizers
# Leak checking stays on, for the unit tests and for the daemons: any sanitizer report in a
# daemon's log fails the test that started it. Should exit-time leak reports of daemons that
# are stopped by signals ever become noise, run this step alone with
# ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1.
integration build-asan

if [ -f tests/fuzz/run.sh ]; then
    step "fuzz targets (10 s each, $JOBS at a time)"
    FUZZ_JOBS=$JOBS sh tests/fuzz/run.sh 10 || fail "fuzz"
else
    step "fuzz targets: tests/fuzz/run.sh not present, skipped"
fi

step "all tests passed"
