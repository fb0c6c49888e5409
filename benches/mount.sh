#!/usr/bin/env bash
# FUSE mount benchmark (docs/PERFORMANCE.md, "FUSE mount"):
#  1. sequential read of a multi-GiB file through `cairn mount` vs `cairn restore`
#     of the same file (target: mount >= 70% of restore throughput), once per
#     cache size in CACHE_SIZES, recording the mount process's peak RSS during
#     the read (target: bounded by --cache-size plus a small fixed overhead);
#  2. `find` and `du -s` over a 100k-file snapshot, after a first walk, vs the
#     same on the original directory (target: within 3x).
#
# Peak RSS is VmHWM of the mount process, reset (/proc/PID/clear_refs, 5) once
# the mount is ready, so it measures serving, not the one-off startup peak of
# the password's key derivation (argon2, ~64 MiB), which is printed apart.
#
# Usage: benches/mount.sh [CAIRN_BINARY]
# Env: SIZE_MIB (size of the big file, default 2048), FILES (default 100000),
#      CACHE_SIZES (default "256MiB 64MiB"), WORK (scratch dir, default a new
#      dir under /var/tmp, removed at the end unless KEEP=1).
# Needs root (drop_caches, clear_refs) or fuse3's fusermount3, ~2.5x SIZE_MIB
# of free disk.
set -euo pipefail

CAIRN=${1:-${CAIRN:-target/release/cairn}}
CAIRN=$(realpath "$CAIRN")
SIZE_MIB=${SIZE_MIB:-2048}
FILES=${FILES:-100000}
CACHE_SIZES=${CACHE_SIZES:-256MiB 64MiB}
WORK=${WORK:-$(mktemp -d /var/tmp/cairn-mount-bench.XXXXXX)}
export CAIRN_PASSWORD=bench CAIRN_REPOSITORY=$WORK/repo CAIRN_CACHE_DIR=$WORK/cache

MNT=$WORK/mnt
MOUNT_PID=
cleanup() {
    if mountpoint -q "$MNT" 2>/dev/null; then fusermount3 -u -z "$MNT" || true; fi
    if [[ -n $MOUNT_PID ]]; then kill "$MOUNT_PID" 2>/dev/null || true; wait "$MOUNT_PID" 2>/dev/null || true; fi
    if [[ -z ${KEEP:-} ]]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { echo "$(now) - $1" | bc -l; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
mib_s() { echo "scale=1; $SIZE_MIB / $1" | bc -l; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
hwm() { awk '/VmHWM/{print $2 " " $3}' "/proc/$MOUNT_PID/status"; }
rss() { awk '/VmRSS/{print $2 " " $3}' "/proc/$MOUNT_PID/status"; }
# Mounts with --cache-size $1 and waits until it is ready.
start_mount() {
    "$CAIRN" mount --cache-size "$1" "$MNT" 2>>"$WORK/mount.log" &
    MOUNT_PID=$!
    until mountpoint -q "$MNT"; do sleep 0.1; done
}
stop_mount() {
    fusermount3 -u "$MNT"
    wait "$MOUNT_PID"; MOUNT_PID=
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "binary: $CAIRN; work dir: $WORK"

mkdir -p "$WORK/big" "$WORK/tree" "$MNT"
# Multi-GiB file: 3 of every 4 MiB random (incompressible), 1 MiB zeros (holes).
python3 - "$WORK/big/big.img" "$SIZE_MIB" <<'EOF'
import os, sys
path, mib = sys.argv[1], int(sys.argv[2])
with open(path, "wb") as f:
    for i in range(mib):
        f.write(b"\0" * (1 << 20) if i % 4 == 3 else os.urandom(1 << 20))
EOF
# FILES small files in directories of 1000.
python3 - "$WORK/tree" "$FILES" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 1000:04d}")
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
        f.write(os.urandom(64 + i % 512))
EOF

"$CAIRN" init >/dev/null
t=$(now); "$CAIRN" backup "$WORK/big" --tag big -q >/dev/null; echo "backup big file: $(elapsed "$t") s"
t=$(now); "$CAIRN" backup "$WORK/tree" --tag tree -q >/dev/null; echo "backup $FILES files: $(elapsed "$t") s"

# 1. Sequential read: restore vs cat through the mount (both cold).
# Restore uses both cores and suffers most from a busy machine: the faster of
# two cold runs is the reference.
restore_s=
for run in 1 2; do
    drop_caches
    t=$(now); "$CAIRN" restore latest --tag big -t "$WORK/restored" -q >/dev/null; s=$(elapsed "$t")
    echo "restore run $run: $s s (load $(load))"
    if [[ -z $restore_s ]] || (( $(echo "$s < $restore_s" | bc -l) )); then restore_s=$s; fi
    cmp "$WORK/big/big.img" "$WORK/restored/big.img"
    rm -rf "$WORK/restored"
done

first=1
for cache in $CACHE_SIZES; do
    start_mount "$cache"
    startup=$(hwm)
    echo 5 >"/proc/$MOUNT_PID/clear_refs"
    snap=$(ls -d "$MNT"/tags/big/*)
    drop_caches
    t=$(now); cat "$snap/big.img" >/dev/null; mount_s=$(elapsed "$t")
    peak=$(hwm)
    echo "sequential read of $SIZE_MIB MiB, --cache-size $cache (load $(load)):"
    echo "  restore $restore_s s ($(mib_s "$restore_s") MiB/s), mount $mount_s s ($(mib_s "$mount_s") MiB/s)"
    echo "  mount / restore throughput: $(echo "scale=2; $restore_s / $mount_s" | bc -l) (target >= 0.70)"
    echo "  mount peak RSS during the read: $peak (startup peak $startup)"
    if [[ -n $first ]]; then
        cmp "$WORK/big/big.img" "$snap/big.img" && echo "  content verified"
    fi
    first=
    stop_mount
done

# 2. find and du -s after a first walk (first cache size).
start_mount "${CACHE_SIZES%% *}"
tree=$(ls -d "$MNT"/tags/tree/*)
before_walk=$(rss)
find "$tree" >/dev/null; du -s "$tree" >/dev/null
find "$WORK/tree" >/dev/null; du -s "$WORK/tree" >/dev/null
t=$(now); find "$WORK/tree" >/dev/null; find_src=$(elapsed "$t")
t=$(now); find "$tree" >/dev/null; find_mnt=$(elapsed "$t")
t=$(now); du -s "$WORK/tree" >/dev/null; du_src=$(elapsed "$t")
t=$(now); du -s "$tree" >/dev/null; du_mnt=$(elapsed "$t")
echo "walks (load $(load)):"
echo "  find over $FILES files: source $find_src s, mount $find_mnt s, ratio $(echo "scale=2; $find_mnt / $find_src" | bc -l) (target <= 3)"
echo "  du -s over $FILES files: source $du_src s, mount $du_mnt s, ratio $(echo "scale=2; $du_mnt / $du_src" | bc -l) (target <= 3)"
echo "  mount RSS: $before_walk before the walks, $(rss) after ($FILES inodes seen)"
stop_mount
echo "unmounted cleanly"
