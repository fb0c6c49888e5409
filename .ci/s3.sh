#!/usr/bin/env bash
# Starts and stops a local S3 server (moto) for cairn's S3 test runs.
#
#   s3_env="$(.ci/s3.sh start)" && eval "$s3_env"
#                                # installs moto if needed, starts it, prints `export` lines
#                                # (assign first: `eval "$(...)"` would hide a failed start)
#   .ci/s3.sh stop               # stops the server started by `start` (by its pid)
#   .ci/s3.sh status             # exit 0 if the recorded server is alive
#
# `start` writes only `export NAME=VALUE` lines to stdout (everything else goes
# to stderr), so its output can be eval'ed. It sets CAIRN_TEST_S3_ENDPOINT,
# CAIRN_TEST_S3_BUCKET, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and
# AWS_EC2_METADATA_DISABLED. The server binds 127.0.0.1 on a free port, keeps
# everything in memory, and is stopped by pid, never by name.
#
# Environment:
#   CAIRN_S3_VENV       virtualenv holding moto (default: <repo>/.venv-s3)
#   CAIRN_S3_STATE_DIR  pid, log and env files (default: <venv>/run)
#   CAIRN_TEST_S3_BUCKET  bucket to create (default: cairn-test)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CAIRN_S3_VENV:-$root/.venv-s3}"
state="${CAIRN_S3_STATE_DIR:-$venv/run}"
pidfile="$state/moto.pid"
envfile="$state/env.sh"
logfile="$state/moto.log"
bucket="${CAIRN_TEST_S3_BUCKET:-cairn-test}"

log() { echo "s3.sh: $*" >&2; }

alive() {
    [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

install_moto() {
    if [[ -x "$venv/bin/moto_server" && -x "$venv/bin/python" ]]; then
        return
    fi
    log "installing moto into $venv (about 20 s)"
    if ! python3 -m venv "$venv" >&2; then
        # Debian ships venv support separately.
        if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
            log "python3 -m venv failed; installing python3-venv"
            rm -rf "$venv"
            apt-get install -y python3-venv >&2
            python3 -m venv "$venv" >&2
        else
            log "python3 -m venv failed; install python3-venv (Debian) and retry"
            return 1
        fi
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]>=5,<6' >&2
}

free_port() {
    "$venv/bin/python" - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

# Waits until the server at $1 answers HTTP; fails if the process at $2 died.
wait_ready() {
    local endpoint="$1" pid="$2"
    "$venv/bin/python" - "$endpoint" "$pid" <<'EOF'
import os, sys, time, urllib.request, urllib.error
endpoint, pid = sys.argv[1], int(sys.argv[2])
for _ in range(300):
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("moto_server exited during startup")
    try:
        urllib.request.urlopen(endpoint + "/", timeout=1)
        sys.exit(0)
    except urllib.error.HTTPError:
        sys.exit(0)  # any HTTP answer means it is serving
    except OSError:
        time.sleep(0.1)
sys.exit("moto_server did not answer within 30 s")
EOF
}

create_bucket() {
    local endpoint="$1"
    AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 \
        "$venv/bin/python" - "$endpoint" "$bucket" <<'EOF'
import sys, boto3
endpoint, bucket = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
existing = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
if bucket not in existing:
    s3.create_bucket(Bucket=bucket)
EOF
}

start() {
    mkdir -p "$state"
    if alive; then
        log "moto already running (pid $(cat "$pidfile"))"
        cat "$envfile"
        return
    fi
    install_moto
    local attempt port pid endpoint
    for attempt in 1 2 3; do
        port="$(free_port)"
        endpoint="http://127.0.0.1:$port"
        "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$logfile" 2>&1 &
        pid=$!
        echo "$pid" >"$pidfile"
        if wait_ready "$endpoint" "$pid"; then
            break
        fi
        log "attempt $attempt: moto did not start on port $port (log: $logfile)"
        kill "$pid" 2>/dev/null || true
        rm -f "$pidfile"
        if [[ $attempt == 3 ]]; then
            tail -n 20 "$logfile" >&2 || true
            return 1
        fi
    done
    create_bucket "$endpoint"
    cat >"$envfile" <<EOF
export CAIRN_TEST_S3_ENDPOINT=$endpoint
export CAIRN_TEST_S3_BUCKET=$bucket
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
EOF
    log "moto listening on $endpoint (pid $pid), bucket $bucket"
    cat "$envfile"
}

stop() {
    if [[ ! -f "$pidfile" ]]; then
        log "no moto pid file at $pidfile; nothing to stop"
        return
    fi
    local pid
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid" 2>/dev/null || true
        fi
        log "stopped moto (pid $pid)"
    fi
    rm -f "$pidfile" "$envfile"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) alive ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
