#!/usr/bin/env bash
# benches/latency.sh: cairn and restic side by side on S3 with network latency (issues 19
# and 25). One S3 server (moto, from .ci/s3.sh) behind cairn-delay-proxy, which releases
# every byte CAIRN_LATENCY_DELAY_MS (default 10) after it arrived in each direction: a 20 ms
# round trip, as `tc netem` would add (not available here). Both tools talk to the same
# server through the same proxy, each into its own bucket, on the same real data.
#
# Per round (CAIRN_LATENCY_ROUNDS, default 3; fresh buckets and caches each round; the
# tool going first alternates between rounds so load drift hits both alike):
#   initial backup            into an empty bucket, with an empty cache
#   unchanged, warm cache     the same source again, with the cache of the initial backup
#   unchanged, empty cache    the same again with a fresh cache dir (a Job pod)
#   restore, empty cache      of the latest snapshot to tmpfs (/dev/shm), fresh cache dir
# each with wall time and peak RSS (GNU time) and the HTTP requests the server logged for it
# by kind (GET of a whole object, RANGE for a ranged GET, PUT, HEAD, DELETE, LIST;
# counted from moto's request log); after the round,
# the repository size (bytes of every object in the bucket). Then the medians and
# cairn/restic. Every run is printed.
#
# Data: CAIRN_LATENCY_SRC (default ~/.cargo/registry/src, real crate sources), copied once
# into the work dir so the data cannot change between runs (cargo may add crates there).
# Other knobs: CAIRN_BENCH_DIR (default /tmp/cairn-latency), CAIRN_BIN and CAIRN_DELAY_PROXY
# (default target/release/{cairn,cairn-delay-proxy}: build them with
# `cargo build --release -p cairn` and `cargo build --release -p cairn-benches --bins`).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
cairn=${CAIRN_BIN:-$target_dir/release/cairn}
proxy=${CAIRN_DELAY_PROXY:-$target_dir/release/cairn-delay-proxy}
src=${CAIRN_LATENCY_SRC:-$HOME/.cargo/registry/src}
delay_ms=${CAIRN_LATENCY_DELAY_MS:-10}
rounds=${CAIRN_LATENCY_ROUNDS:-3}
work=${CAIRN_BENCH_DIR:-/tmp/cairn-latency}
restore_dir=/dev/shm/cairn-latency-restore

for bin in "$cairn" "$proxy"; do
  [ -x "$bin" ] || { echo "latency.sh: $bin is missing; build it (see the header of this script)" >&2; exit 2; }
done
if ! command -v restic >/dev/null; then
  apt-get install -y restic >/dev/null || { apt-get update >/dev/null && apt-get install -y restic >/dev/null; }
fi
if [ ! -x /usr/bin/time ]; then apt-get install -y time >/dev/null; fi

mkdir -p "$work"
data=$work/data
if [ "$(cat "$work/data.from" 2>/dev/null)" != "$src" ]; then
  rm -rf "$data"
  echo "copying $src to $data"
  cp -a "$src" "$data"
  echo "$src" >"$work/data.from"
fi

# The S3 server: our own moto instance (own state dir, own log), stopped on exit.
export CAIRN_S3_STATE_DIR=$work/s3
s3_env=$("$root/.ci/s3.sh" start)
eval "$s3_env"
venv=${CAIRN_S3_VENV:-$root/.venv-s3}
moto_log=$CAIRN_S3_STATE_DIR/moto.log
proxy_pid=
cleanup() {
  [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null || true
  "$root/.ci/s3.sh" stop 2>/dev/null || true
  rm -rf "$restore_dir"
}
trap cleanup EXIT

"$proxy" 127.0.0.1:0 "${CAIRN_TEST_S3_ENDPOINT#http://}" "$delay_ms" >"$work/proxy.out" 2>"$work/proxy.log" &
proxy_pid=$!
for _ in $(seq 100); do
  grep -q "listening on" "$work/proxy.out" 2>/dev/null && break
  sleep 0.05
done
proxy_addr=$(sed -n 's/^listening on //p' "$work/proxy.out")
[ -n "$proxy_addr" ] || { echo "latency.sh: the proxy did not start" >&2; cat "$work/proxy.log" >&2; exit 1; }
endpoint=http://$proxy_addr

# Buckets are made and measured on the server directly, not through the proxy.
s3py() { "$venv/bin/python" - "$CAIRN_TEST_S3_ENDPOINT" "$@"; }
make_bucket() {
  s3py "$1" <<'EOF'
import sys, boto3
boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1").create_bucket(Bucket=sys.argv[2])
EOF
}
bucket_bytes() {
  s3py "$1" <<'EOF'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1")
total = 0
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[2]):
    total += sum(o["Size"] for o in page.get("Contents", []))
print(total)
EOF
}
drop_bucket() {
  s3py "$1" <<'EOF'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1")
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[2]):
    for o in page.get("Contents", []):
        s3.delete_object(Bucket=sys.argv[2], Key=o["Key"])
s3.delete_bucket(Bucket=sys.argv[2])
EOF
}

# The requests moto logged since line $1 of its log, by kind.
requests_since() {
  # werkzeug colours some lines (206 answers, errors): strip the escapes first.
  tail -n +"$(($1 + 1))" "$moto_log" | sed 's/\x1b\[[0-9;]*m//g' | awk '
    /"(GET|PUT|HEAD|DELETE|POST) / {
      split($0, q, "\""); split(q[2], r, " "); m = r[1]; p = r[2]
      split(q[3], st, " ")
      if (m == "GET" && p ~ /[?&](list-type|prefix|delimiter)=/) m = "LIST"
      else if (m == "GET" && st[1] == 206) m = "RANGE"
      n[m]++; total++
    }
    END {
      s = ""
      split("GET RANGE PUT HEAD DELETE LIST POST", order, " ")
      for (i = 1; i <= 7; i++) if (n[order[i]]) s = s sprintf(" %s %d", order[i], n[order[i]])
      printf "%d:%s\n", total, (s == "" ? " none" : s)
    }'
}

export CAIRN_PASSWORD=bench RESTIC_PASSWORD=bench
results=$work/results.txt
: >"$results"
# run TOOL ROUND STEP COMMAND...: one measured run, printed and recorded.
run() {
  local tool=$1 round=$2 step=$3; shift 3
  local before wall rss reqs
  before=$(wc -l <"$moto_log")
  /usr/bin/time -f "%e %M" -o "$work/time.txt" "$@" >"$work/out.txt" 2>&1 \
    || { cat "$work/out.txt" "$work/time.txt" >&2; exit 1; }
  read -r wall rss <"$work/time.txt"
  # Let the server finish writing its log lines for the last answers.
  sleep 0.2
  reqs=$(requests_since "$before")
  printf '%-7s round %d  %-24s %7.2f s  %5d MiB  requests %s\n' \
    "$tool" "$round" "$step" "$wall" $((rss / 1024)) "$reqs"
  echo "$tool|$step|$wall|$rss|${reqs%%:*}" >>"$results"
}

read_data() { tar cf - -C "$data" . | cat >/dev/null; }

one_tool() { # TOOL ROUND
  local tool=$1 r=$2 bucket=$1-r$2
  local warm=$work/cache-$tool-r$r cold=$work/cold-$tool
  rm -rf "$warm" "$cold"
  make_bucket "$bucket"
  case $tool in
    cairn)
      local repo="s3://$bucket?endpoint=$endpoint"
      CAIRN_CACHE_DIR=$warm "$cairn" -q -r "$repo" init >/dev/null
      read_data
      CAIRN_CACHE_DIR=$warm run cairn "$r" "initial backup" "$cairn" -q -r "$repo" backup "$data"
      CAIRN_CACHE_DIR=$warm run cairn "$r" "unchanged, warm cache" "$cairn" -q -r "$repo" backup "$data"
      CAIRN_CACHE_DIR=$cold run cairn "$r" "unchanged, empty cache" "$cairn" -q -r "$repo" backup "$data"
      rm -rf "$cold" "$restore_dir"
      CAIRN_CACHE_DIR=$cold run cairn "$r" "restore, empty cache" "$cairn" -q -r "$repo" restore latest -t "$restore_dir"
      ;;
    restic)
      local repo="s3:$endpoint/$bucket"
      restic -q -r "$repo" --cache-dir "$warm" init >/dev/null
      read_data
      run restic "$r" "initial backup" restic -q -r "$repo" --cache-dir "$warm" backup "$data"
      run restic "$r" "unchanged, warm cache" restic -q -r "$repo" --cache-dir "$warm" backup "$data"
      run restic "$r" "unchanged, empty cache" restic -q -r "$repo" --cache-dir "$cold" backup "$data"
      rm -rf "$cold" "$restore_dir"
      run restic "$r" "restore, empty cache" restic -q -r "$repo" --cache-dir "$cold" restore latest --target "$restore_dir"
      ;;
  esac
  local want got
  want=$(find "$data" -type f | wc -l)
  got=$(find "$restore_dir" -type f | wc -l)
  [ "$want" = "$got" ] || { echo "latency.sh: $tool restored $got files of $want" >&2; exit 1; }
  rm -rf "$cold" "$warm" "$restore_dir"
  local bytes
  bytes=$(bucket_bytes "$bucket")
  printf '%-7s round %d  %-24s %7.1f MiB\n' "$tool" "$r" "repository size" "$(awk -v b="$bytes" 'BEGIN { print b / 1048576 }')"
  echo "$tool|repository size|$bytes|0|0" >>"$results"
  drop_bucket "$bucket"
}

files=$(find "$data" -type f | wc -l)
dirs=$(find "$data" -type d | wc -l)
echo "data: $src ($(du -sh --apparent-size "$data" | cut -f1), $files files, $dirs directories)"
echo "server: moto $("$venv/bin/python" -c 'import moto; print(moto.__version__)') at $CAIRN_TEST_S3_ENDPOINT, through cairn-delay-proxy at $endpoint, ${delay_ms} ms each way"
echo "cairn at $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD -- crates || echo '+local changes'), $(restic version | cut -d' ' -f1-2)"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min), $(nproc) cores"
for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then order="cairn restic"; else order="restic cairn"; fi
  for tool in $order; do one_tool "$tool" "$r"; done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

echo
echo "medians of $rounds rounds, ${delay_ms} ms each way:"
awk -F'|' '
  { key = $1 "|" $2; n[key]++; v[key, n[key]] = $3; rss[key, n[key]] = $4; rq[key, n[key]] = $5
    if (!($2 in seen)) { seen[$2] = 1; steps[++ns] = $2 } }
  function median(key, arr,   i, j, t, a, m) {
    m = n[key]; for (i = 1; i <= m; i++) a[i] = arr[key, i] + 0
    for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
  }
  END {
    printf "| step | cairn | restic | cairn/restic | cairn peak RSS | restic peak RSS | cairn requests | restic requests |\n"
    printf "|---|---:|---:|---:|---:|---:|---:|---:|\n"
    for (i = 1; i <= ns; i++) {
      s = steps[i]; c = median("cairn|" s, v); r = median("restic|" s, v)
      if (s == "repository size") {
        printf "| %s | %.1f MiB | %.1f MiB | %.2f | | | | |\n", s, c / 1048576, r / 1048576, c / r
      } else {
        printf "| %s | %.2f s | %.2f s | %.2f | %d MiB | %d MiB | %d | %d |\n", s, c, r, c / r,
          median("cairn|" s, rss) / 1024, median("restic|" s, rss) / 1024,
          median("cairn|" s, rq), median("restic|" s, rq)
      }
    }
  }' "$results"
