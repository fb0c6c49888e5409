#!/usr/bin/env bash
# benches/block.sh: a thin disk (issue 18). A sparse image of SIZE_GIB GiB
# holding DATA_GIB GiB of random data in 64 MiB islands, then, each with
# /usr/bin/time -v's wall time and peak RSS:
#   1. cairn backup --read-devices IMAGE into a fresh repository (holes are
#      skipped by SEEK_DATA, so only the data is read from the disk);
#   2. the same again with --force (a device is always re-read; nothing new
#      is stored);
#   3. cat IMAGE | cairn backup --stdin into a fresh repository (every byte
#      through a pipe, zeros included, as a dump or `dd` would send them);
#   4. cat IMAGE | restic backup --stdin, when restic is installed.
# Throughput is reported per byte of the image and per byte of data, beside
# the new-data pipeline limit of random data on this machine
# (`cairn-limits --terse`, binary column).
# Usage: benches/block.sh [SIZE_GIB] [DATA_GIB]   (defaults 16 4)
# CAIRN_BIN / CAIRN_LIMITS pick prebuilt binaries; CAIRN_BENCH_DIR the
# work directory (default /tmp/cairn-block; needs about 3 x DATA_GIB free).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
size_gib=${1:-16}
data_gib=${2:-4}
work=${CAIRN_BENCH_DIR:-/tmp/cairn-block}
cairn=${CAIRN_BIN:-$target_dir/release/cairn}
limits=${CAIRN_LIMITS:-$target_dir/release/cairn-limits}
if [ -z "${CAIRN_BIN:-}" ] || [ -z "${CAIRN_LIMITS:-}" ]; then
  (cd "$root" && CARGO_TARGET_DIR="$target_dir" cargo build --release -q \
    -p cairn -p cairn-benches --bin cairn --bin cairn-limits)
fi
export CAIRN_PASSWORD=bench RESTIC_PASSWORD=bench
rm -rf "$work"
mkdir -p "$work"
img=$work/disk.img
size=$((size_gib << 30))
data=$((data_gib << 30))
islands=$((data >> 26))
if [ "$islands" -lt 1 ] || [ "$data" -gt "$size" ]; then
  echo "DATA_GIB must be at least 1/16 and at most SIZE_GIB" >&2
  exit 2
fi
truncate -s "$size" "$img"
stride=$((size / islands))
for i in $(seq 0 $((islands - 1))); do
  dd if=/dev/urandom of="$img" bs=1M count=64 seek=$(((i * stride) >> 20)) conv=notrunc status=none
done
sync
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(date -u +'%Y-%m-%d %H:%M UTC'); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "image: $size_gib GiB, $data_gib GiB of random data in $islands islands of 64 MiB; $(du -h "$img" | cut -f1) allocated"
limit=$("$limits" --terse "$(nproc)" 64 1 | awk '{print $2}')
echo "new-data pipeline limit on $(nproc) cores (random data): $limit MiB/s"
echo
printf '| run | wall (s) | image MiB/s | data MiB/s | data / limit | peak RSS (MiB) | stored (MiB) |\n'
printf '|---|---:|---:|---:|---:|---:|---:|\n'
measure() { # label, repository dir (for its size), then the command (a shell line)
  local label=$1 repo=$2
  shift 2
  /usr/bin/time -v sh -c "$*" >/dev/null 2>"$work/time.txt" || { cat "$work/time.txt"; exit 1; }
  local wall rss secs stored
  wall=$(grep "Elapsed (wall" "$work/time.txt" | awk '{print $NF}')
  rss=$(grep "Maximum resident" "$work/time.txt" | awk '{print $NF}')
  secs=$(echo "$wall" | awk -F: '{ if (NF == 3) print $1 * 3600 + $2 * 60 + $3; else print $1 * 60 + $2 }')
  stored=$(du -sm "$repo" | cut -f1)
  awk -v l="$label" -v s="$secs" -v size="$size" -v data="$data" -v lim="$limit" -v rss="$rss" -v st="$stored" \
    'BEGIN { d = data / 1048576 / s; printf "| %s | %.1f | %.0f | %.0f | %.2f | %d | %d |\n", l, s, size / 1048576 / s, d, d / lim, rss / 1024, st }'
}
export CAIRN_CACHE_DIR=$work/cache
"$cairn" -q -r "$work/repo" init >/dev/null
measure "cairn backup --read-devices (first)" "$work/repo" "'$cairn' -q -r '$work/repo' backup --read-devices '$img'"
measure "cairn backup --read-devices --force (unchanged)" "$work/repo" "'$cairn' -q -r '$work/repo' backup --force --read-devices '$img'"
"$cairn" -q -r "$work/repo-stdin" init >/dev/null
measure "cat image \| cairn backup --stdin" "$work/repo-stdin" "cat '$img' | '$cairn' -q -r '$work/repo-stdin' backup --stdin --stdin-filename disk.img"
if command -v restic >/dev/null; then
  restic -q -r "$work/repo-restic" init >/dev/null
  measure "cat image \| restic backup --stdin ($(restic version | awk '{print $2}'))" "$work/repo-restic" \
    "cat '$img' | restic -q -r '$work/repo-restic' backup --stdin --stdin-filename disk.img"
else
  echo
  echo "restic: not installed on this machine (no side-by-side run)"
fi
rm -rf "$work"
