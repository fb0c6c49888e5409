#!/usr/bin/env bash
# benches/ab.sh: two or more cairn builds on the same initial backup, runs interleaved.
#
#   benches/ab.sh RUNS DATA NAME=COMMAND [NAME=COMMAND...]
#
# Each round backs DATA up once with every COMMAND (a cairn binary, maybe
# behind `env VAR=value`) into a fresh repository, in the order given, and
# prints per NAME the minimum and median wall time and CPU time (user +
# system) and the largest peak RSS. Interleaving is the point: on a shared
# VM the same backup's CPU time swings by a third from one minute to the
# next, so only builds measured in the same minutes compare. Example:
#
#   cp target/release/cairn /tmp/cairn-old   # before the change
#   cargo build --release -p cairn           # after it
#   benches/ab.sh 5 /data/tree old=/tmp/cairn-old new=target/release/cairn
#
# CAIRN_BENCH_DIR: where repositories and caches go (default /tmp/cairn-ab).
set -euo pipefail

if [ $# -lt 3 ]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
runs=$1 data=$2
shift 2
work=${CAIRN_BENCH_DIR:-/tmp/cairn-ab}
if [ ! -x /usr/bin/time ]; then apt-get install -y time >/dev/null; fi
mkdir -p "$work"
export CAIRN_PASSWORD=ab CAIRN_CACHE_DIR=$work/cache
results=$work/results
: >"$results"
for _ in $(seq "$runs"); do
  for variant in "$@"; do
    name=${variant%%=*} cmd=${variant#*=}
    rm -rf "$work/repo" "$work/cache"
    # shellcheck disable=SC2086 # the command may be `env VAR=value binary`
    $cmd -q -r "$work/repo" init >/dev/null
    # Warm the page cache right before each run: this VM's DAMON pages out
    # file pages that have gone cold, even minutes after a read.
    find "$data" -type f -print0 | xargs -0 cat >/dev/null
    sync
    # shellcheck disable=SC2086
    if ! /usr/bin/time -f "$name %e %U %S %M" -a -o "$results" $cmd -q -r "$work/repo" backup "$data" >/dev/null 2>"$work/stderr"; then
      echo "$name failed:" >&2; cat "$work/stderr" >&2; exit 1
    fi
  done
done
rm -rf "$work/repo" "$work/cache"
awk '
  { wall[$1] = wall[$1] " " $2; cpu[$1] = cpu[$1] " " ($3 + $4); if ($5 > rss[$1]) rss[$1] = $5
    if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 } }
  function sorted(s, a,   k, i, j, t) { k = split(s, a, " ")
    for (i = 2; i <= k; i++) for (j = i; j > 1 && a[j-1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
    return k }
  function median(a, k) { return k % 2 ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2 }
  END { for (i = 1; i <= n; i++) { v = order[i]
    k = sorted(wall[v], w); sorted(cpu[v], c)
    printf "%-10s wall min %.2f median %.2f s | cpu min %.2f median %.2f s | peak RSS %d MiB | runs:%s\n",
      v, w[1], median(w, k), c[1], median(c, k), rss[v] / 1024, wall[v] } }' "$results"
