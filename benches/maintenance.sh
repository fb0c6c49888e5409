#!/usr/bin/env bash
# benches/maintenance.sh [N]: full maintenance of a repository of N small
# blobs (default 1M): build it through the library, then time
# `maintenance run --full` (zero window) twice, the first marking, the
# second sweeping, with /usr/bin/time -v for wall time and peak RSS.
# Results: docs/PERFORMANCE.md, "Maintenance".
#
# benches/maintenance.sh fake N: `maintenance run --full` over an index of
# N fake blobs (`cairn-benchgen fake-index`, 10k blobs a pack, 1M a
# segment, written without a cache) of which CAIRN_MAINT_LIVE per cent
# (default 60) are referenced by one snapshot through real chunk lists;
# each fake pack is an empty object, so maintenance finds it present.
# Each step with its wall time and peak RSS, in order: `--full --dry-run`
# on an empty cache, the same on the cache it left (warm), `--full --now`
# on an empty cache (marks: plans the 40% dead packs), `--full --now`
# again on the cache it left (sweeps: rewrites every segment without the
# dead packs, deletes them; then marks again). What a fake index leaves
# out: no pack is read or rewritten (whole packs are live or dead, none
# sparse), so repack I/O is not measured. Results: docs/PERFORMANCE.md,
# "Maintenance at 100M". Disk: ~36 bytes a blob of segments, ~22 a live
# blob of chunk lists; the repository is deleted at the end
# (CAIRN_MAINT_KEEP=1 keeps it). CAIRN_MAINT_BASE=BIN first measures the
# two dry runs with another build on the same repository.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$root/target}
if [ "${1:-}" = fake ]; then
  blobs=${2:?usage: benches/maintenance.sh fake N}
  work=${CAIRN_BENCH_DIR:-/tmp/cairn-maint}/fake-$blobs
  cairn=${CAIRN_BIN:-$TARGET/release/cairn}
  gen=${CAIRN_BENCHGEN:-$TARGET/release/cairn-benchgen}
  export CAIRN_PASSWORD=bench
  rm -rf "$work"
  mkdir -p "$work"
  [ "${CAIRN_MAINT_KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
  measure() { # label, cache, then the command
    local label=$1 cache=$2
    shift 2
    CAIRN_CACHE_DIR=$cache /usr/bin/time -v "$@" >"$work/out.txt" 2>"$work/time.txt" ||
      { cat "$work/out.txt" "$work/time.txt"; exit 1; }
    local wall rss
    wall=$(grep "Elapsed (wall" "$work/time.txt" | awk '{print $NF}')
    rss=$(grep "Maximum resident" "$work/time.txt" | awk '{print $NF}')
    printf '%-52s %10s  %6d MiB\n' "$label" "$wall" $((rss / 1024))
    sed 's/^/    /' "$work/out.txt"
  }
  df -h "$work" | tail -1
  CAIRN_CACHE_DIR=$work/gen-cache "$cairn" -q -r "$work/repo" init >/dev/null
  echo "adding $blobs fake blobs, ${CAIRN_MAINT_LIVE:-60}% referenced"
  CAIRN_BENCHGEN_NO_CACHE=1 CAIRN_BENCHGEN_PACKS=1 CAIRN_BENCHGEN_LIVE=${CAIRN_MAINT_LIVE:-60} \
    CAIRN_CACHE_DIR=$work/gen-cache /usr/bin/time -f "  %e s, peak RSS %M KiB" "$gen" fake-index "$work/repo" "$blobs"
  rm -rf "$work/gen-cache"
  du -sh "$work/repo/index" "$work/repo/packs" | sed 's/^/  /'
  if [ -n "${CAIRN_MAINT_BASE:-}" ]; then
    # CAIRN_MAINT_BASE: another cairn binary (the build before a change),
    # measured first on the same repository, dry runs only.
    echo "$CAIRN_MAINT_BASE, $blobs fake blobs:"
    measure "maintenance run --full --dry-run, empty cache" "$work/base-cache" \
      "$CAIRN_MAINT_BASE" -r "$work/repo" maintenance run --full --dry-run
    measure "maintenance run --full --dry-run, warm cache" "$work/base-cache" \
      "$CAIRN_MAINT_BASE" -r "$work/repo" maintenance run --full --dry-run
    du -sh "$work/base-cache" | sed 's/^/  cache: /'
    rm -rf "$work/base-cache"
  fi
  echo "$cairn, $blobs fake blobs:"
  measure "maintenance run --full --dry-run, empty cache" "$work/cache" \
    "$cairn" -r "$work/repo" maintenance run --full --dry-run
  measure "maintenance run --full --dry-run, warm cache" "$work/cache" \
    "$cairn" -r "$work/repo" maintenance run --full --dry-run
  rm -rf "$work/cache"
  measure "maintenance run --full --now (mark), empty cache" "$work/cache" \
    "$cairn" -r "$work/repo" maintenance run --full --now
  measure "maintenance run --full --now (sweep), warm cache" "$work/cache" \
    "$cairn" -r "$work/repo" maintenance run --full --now
  du -sh "$work/cache" | sed 's/^/  cache: /'
  df -h "$work" | tail -1
  exit 0
fi
N=${1:-1000000}
cargo build --release -p cairn-core --example maintenance_bench
BIN="$TARGET/release/examples/maintenance_bench"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
/usr/bin/time -v "$BIN" create "$WORK/repo" "$N" 2>"$WORK/time.txt"
grep -E 'Elapsed|Maximum resident' "$WORK/time.txt"
# The first run marks (plans the unused packs), the second sweeps them
# (a zero window) and marks again.
for run in first second; do
  echo "full maintenance, $run run:"
  /usr/bin/time -v "$BIN" run "$WORK/repo" 2>"$WORK/time.txt"
  grep -E 'Elapsed|Maximum resident' "$WORK/time.txt"
done
