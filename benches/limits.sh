#!/usr/bin/env bash
# benches/limits.sh: the single-core rate of each backup stage on this machine
# (chunk, zero check, hash, compress, encrypt) and the new-data pipeline limit
# they imply on CORES cores (default: all), as a Markdown table.
# Usage: benches/limits.sh [CORES] [MIB of data per kind] [seconds per stage]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
(cd "$root" && CARGO_TARGET_DIR="$target_dir" cargo build --release -q -p cairn-benches --bin cairn-limits)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(date -u +'%Y-%m-%d %H:%M UTC'); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
"$target_dir/release/cairn-limits" "${1:-$(nproc)}" "${2:-64}" "${3:-1}"
