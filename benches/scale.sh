#!/usr/bin/env bash
# benches/scale.sh: memory at scale. Backs up a tree of CAIRN_SCALE_FILES
# files (default 1M, a few bytes each, 1000 per directory) into a repository
# whose index already names CAIRN_SCALE_BLOBS blobs (default 10M, fake
# entries added by `cairn-benchgen fake-index`: dedup lookups see them, no
# pack is ever read), then an unchanged re-backup, and prints the peak RSS
# of each (target: under 300 MiB).
# Disk: about 5 GiB for the tree's inodes and blocks and the cache.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
files=${CAIRN_SCALE_FILES:-1000000}
blobs=${CAIRN_SCALE_BLOBS:-10000000}
work=${CAIRN_BENCH_DIR:-/tmp/cairn-scale}
# Two builds, not one: building both packages at once unifies their
# dependencies' features into a third set and rebuilds them all.
(cd "$root" && CARGO_TARGET_DIR="$target_dir" cargo build --release -q -p cairn)
(cd "$root" && CARGO_TARGET_DIR="$target_dir" cargo build --release -q -p cairn-benches --bins)
cairn=$target_dir/release/cairn
gen=$target_dir/release/cairn-benchgen
export CAIRN_PASSWORD=bench CAIRN_CACHE_DIR=$work/cache
rm -rf "$work/repo" "$work/cache"
mkdir -p "$work"
if [ "$(cat "$work/tree.spec" 2>/dev/null)" != "$files" ]; then
  rm -rf "$work/tree"
  echo "generating $files files"
  "$gen" tiny-tree "$work/tree" "$files"
  echo "$files" >"$work/tree.spec"
fi
"$cairn" -q -r "$work/repo" init >/dev/null
echo "adding $blobs fake blobs to the index"
/usr/bin/time -f "  %e s, peak RSS %M KiB" "$gen" fake-index "$work/repo" "$blobs"
for run in initial unchanged; do
  echo "backup ($run) of $files files over a $blobs-blob index:"
  /usr/bin/time -f "  %e s, peak RSS %M KiB" "$cairn" -q -r "$work/repo" backup "$work/tree" >/dev/null
done
