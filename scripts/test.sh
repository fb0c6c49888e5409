#!/usr/bin/env bash
# The whole test suite, as CI runs it, on a fresh machine: installs what the
# tests need (fuse3; moto as the S3 server), checks formatting and lints,
# then runs every test on the local filesystem backend and the integration
# tests again on S3.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "==> starting the S3 server (moto)"
s3_env="$(.ci/s3.sh start)"
eval "$s3_env"
trap '.ci/s3.sh stop >/dev/null 2>&1 || true' EXIT

echo "==> tests on the local filesystem backend"
CAIRN_TEST_BACKEND=fs cargo nextest run --workspace --profile ci
echo "==> integration tests on S3"
CAIRN_TEST_BACKEND=s3 cargo nextest run --workspace --profile ci -E 'kind(test)'
