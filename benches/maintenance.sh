#!/usr/bin/env bash
# Full maintenance of a repository of N small blobs (default 1M): build it
# through the library, then time `maintenance run --full` (zero window) with
# /usr/bin/time -v for wall time and peak RSS. Results: docs/PERFORMANCE.md.
set -euo pipefail
N=${1:-1000000}
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release -p cairn-core --example maintenance_bench
BIN="$TARGET/release/examples/maintenance_bench"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$BIN" create "$WORK/repo" "$N"
/usr/bin/time -v "$BIN" run "$WORK/repo" 2>"$WORK/time.txt"
grep -E 'Elapsed|Maximum resident' "$WORK/time.txt"
