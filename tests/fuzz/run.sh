#!/bin/sh
# run.sh [SECONDS] - build every tests/fuzz/fuzz_*.c as a libFuzzer target
# and run each for SECONDS seconds (default 30) on a copy of its seed
# corpus tests/fuzz/seeds/NAME. Prints one summary line per target, in the
# targets' order; exits non-zero if a target fails to build or finds a
# crash. Crash inputs are kept in tests/fuzz/out/. Works from any directory.
#
# The targets link only the pure sources (parsers and their helpers), never
# anything that does network I/O; those are compiled once, with the same
# instrumentation, and linked into every target. FUZZ_JOBS targets (default
# 2) are built and run side by side, each a single libFuzzer process that
# gets SECONDS of its own. Set FUZZ_CC to use another clang.
set -u

secs=${1:-30}
case $secs in
'' | *[!0-9]*)
	echo "usage: $0 [SECONDS]" >&2
	exit 2
	;;
esac

root=$(cd "$(dirname "$0")/../.." && pwd) || exit 2
cd "$root" || exit 2
cc=${FUZZ_CC:-clang}
jobs=${FUZZ_JOBS:-2}
case $jobs in
'' | *[!0-9]* | 0)
	echo "run.sh: FUZZ_JOBS must be a positive number" >&2
	exit 2
	;;
esac
sanflags="-g -O1 -fno-sanitize-recover=all"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sorter-fuzz.XXXXXX") || exit 2
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

inc="-I."
if [ ! -f config.h ]; then
	# configure has not run: stand in for the config.h it would write
	# (AC_USE_SYSTEM_EXTENSIONS is all the pure sources rely on)
	mkdir "$tmp/include"
	printf '#ifndef _GNU_SOURCE\n# define _GNU_SOURCE 1\n#endif\n' > "$tmp/include/config.h"
	inc="$inc -I$tmp/include"
fi

pure=""
for f in lib/alloc.c lib/log.c lib/util.c lib/config.c lib/address.c lib/xtext.c lib/utf8.c \
    lib/dsnparam.c lib/milterspec.c smtpd/command.c smtpd/data.c smtpd/sasl.c \
    smtpd/milter_proto.c smtpd/milter_apply.c queue/spool.c router/reply.c \
    router/mapsource.c router/canon.c router/mx.c router/nodecaps.c router/ldapconf.c \
    smtpd/proxy.c queue/import_marker.c queue/nodestate.c queue/journal_codec.c; do
	[ -f "$f" ] && pure="$pure $f"
done

# the pure sources, once, instrumented for libFuzzer (no main: each target
# links libFuzzer's), jobs at a time
mkdir "$tmp/obj"
objs=""
n=0
for f in $pure; do
	o="$tmp/obj/$(echo "$f" | tr / _ | sed 's/\.c$/.o/')"
	objs="$objs $o"
	# shellcheck disable=SC2086
	"$cc" $sanflags -fsanitize=fuzzer-no-link,address,undefined $inc -c "$f" -o "$o" \
	    >"$o.log" 2>&1 &
	n=$((n + 1))
	[ $((n % jobs)) -eq 0 ] && wait
done
wait
for o in $objs; do
	if [ ! -f "$o" ]; then
		echo "$o: BUILD FAILED"
		sed 's/^/    /' "$o.log" | head -40
		exit 1
	fi
done

# one_target NAME: builds and runs tests/fuzz/NAME.c; its summary goes to
# $tmp/NAME.out, its exit status (0 ok) to $tmp/NAME.rc
one_target() {
	name=$1
	src=tests/fuzz/$name.c
	seeds=tests/fuzz/seeds/${name#fuzz_}
	bin="$tmp/$name"
	log="$tmp/$name.log"
	out="$tmp/$name.out"

	# shellcheck disable=SC2086
	if ! "$cc" $sanflags -fsanitize=fuzzer,address,undefined $inc $objs "$src" -o "$bin" \
	    -lcrypto >"$log" 2>&1; then
		{
			echo "$name: BUILD FAILED"
			sed 's/^/    /' "$log" | head -40
		} >"$out"
		echo 1 >"$tmp/$name.rc"
		return
	fi

	corpus="$tmp/corpus-$name"
	mkdir "$corpus"
	[ -d "$seeds" ] && cp -R "$seeds/." "$corpus/"

	"$bin" -max_total_time="$secs" -timeout=10 -print_final_stats=1 \
	    -artifact_prefix="$root/tests/fuzz/out/$name-" "$corpus" >"$log" 2>&1
	rc=$?
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
	if [ "$rc" -eq 0 ]; then
		# shellcheck disable=SC2012
		echo "$name: ok, ${runs:-?} runs in ${secs}s, corpus $(ls "$corpus" | wc -l) inputs" >"$out"
	else
		artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
		{
			echo "$name: FAILED (exit $rc)${artifact:+, input saved as $artifact}"
			grep -E 'ERROR|invariant failed|runtime error|SUMMARY' "$log" | head -10 | sed 's/^/    /'
		} >"$out"
	fi
	echo "$rc" >"$tmp/$name.rc"
}

# report NAMES...: prints the summaries of finished targets in order
report() {
	for name in "$@"; do
		cat "$tmp/$name.out"
		[ "$(cat "$tmp/$name.rc")" = 0 ] || status=1
	done
}

mkdir -p tests/fuzz/out
status=0
found=0
batch=""
running=0
for src in tests/fuzz/fuzz_*.c; do
	[ -f "$src" ] || continue
	found=1
	name=$(basename "$src" .c)
	one_target "$name" &
	batch="$batch $name"
	running=$((running + 1))
	if [ "$running" -ge "$jobs" ]; then
		wait
		# shellcheck disable=SC2086
		report $batch
		batch=""
		running=0
	fi
done
wait
# shellcheck disable=SC2086
[ -n "$batch" ] && report $batch

if [ "$found" -eq 0 ]; then
	echo "no fuzz targets under tests/fuzz" >&2
	exit 1
fi
exit $status
