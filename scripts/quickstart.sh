#!/usr/bin/env bash
# cairn's main job, end to end, on a fresh machine: build cairn, create a local
# repository, back a directory up twice (the second run skips unchanged
# files), list the snapshots and restore the latest one, then check the
# restore is bit-exact.
#
# Usage: scripts/quickstart.sh [DIR_TO_BACK_UP]   (default: this checkout's crates/ and docs/)
# Everything goes under ./quickstart/ (delete it afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
work="$top/quickstart"
src_arg="${1:-}"

echo "==> building cairn (release)"
cargo build --release -p cairn --quiet
# Where cargo put it: CARGO_TARGET_DIR, if set, moves the target directory.
target_dir="${CARGO_TARGET_DIR:-$top/target}"
case $target_dir in /*) ;; *) target_dir="$top/$target_dir" ;; esac
cairn="$target_dir/release/cairn"

rm -rf "$work"
mkdir -p "$work"
export CAIRN_REPOSITORY="$work/repo"
export CAIRN_PASSWORD="quickstart-password"
export CAIRN_CACHE_DIR="$work/cache"

if [ -n "$src_arg" ]; then
  src="$(cd "$src_arg" && pwd)"
else
  src="$work/source"
  mkdir -p "$src"
  cp -r "$top/crates" "$top/docs" "$src/"
  head -c 8388608 /dev/urandom > "$src/random.bin"
  truncate -s 64M "$src/sparse.img"
  ln -s docs "$src/docs-link"
fi

echo "==> cairn init"
"$cairn" init
echo "==> cairn backup $src"
"$cairn" backup "$src" --tag quickstart
echo "==> cairn backup again (unchanged files are not read)"
"$cairn" backup "$src" --tag quickstart
echo "==> cairn snapshots"
"$cairn" snapshots
echo "==> cairn ls latest (first entries)"
"$cairn" ls latest | head -n 10
echo "==> cairn restore latest --verify"
"$cairn" restore latest --target "$work/restored" --verify
echo "==> diff -r source restored"
diff -r "$src" "$work/restored"
echo "OK: restore is identical to the source. Repository: $CAIRN_REPOSITORY"
