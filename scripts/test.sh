#!/usr/bin/env bash
# The whole test suite, as CI runs it, on a fresh machine: installs what the
# tests need (fuse3, kubectl, prometheus; moto as the S3 server), checks formatting and lints,
# then runs every test on the local filesystem backend and the integration
# tests again on S3.
#
# Everything that needs the network or disk outside target/ (apt, pip) runs
# before the first build, so a tight disk fails the build with cargo's own
# message rather than the S3 server's install half-way through. Builds are
# not incremental: that state is ~0.5 GB CI never reuses.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_INCREMENTAL=0
export PIP_NO_CACHE_DIR=1

disk() { echo "    free disk: $(df -h --output=avail . | tail -n 1 | tr -d ' ') ($1)"; }

need_apt=()
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
# kubectl drives the simulated cluster in crates/kube-sim's tests (Debian's package).
command -v kubectl >/dev/null 2>&1 || need_apt+=(kubernetes-client)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
# prometheus scrapes the controller in the metrics e2e test; promtool checks the alerts.
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

echo "==> starting the S3 server (moto)"
disk "before"
s3_env="$(.ci/s3.sh start)"
eval "$s3_env"
trap '.ci/s3.sh stop >/dev/null 2>&1 || true' EXIT

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
disk "after clippy"
# The criterion benches (benches/benches/) are built, not run, so they cannot
# rot; in the dev profile, sharing the tests' build instead of a release one.
echo "==> cargo bench --no-run (compile check)"
cargo bench --workspace --profile dev --no-run --quiet

echo "==> tests on the local filesystem backend"
CAIRN_TEST_BACKEND=fs cargo nextest run --workspace --profile ci
disk "after the build"
echo "==> integration tests on S3"
CAIRN_TEST_BACKEND=s3 cargo nextest run --workspace --profile ci -E 'kind(test)'
