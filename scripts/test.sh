#!/usr/bin/env bash
# Runs Meridian's whole test suite on a fresh Debian machine, installing what the tests need
# (PostgreSQL server binaries, Patroni and etcd; the tests start their own throwaway servers and
# Patroni clusters from them; promtool, from the package prometheus, which checks every role's
# /metrics; Chromium and chromedriver, which the controller dashboard's browser test drives;
# HAProxy, the load balancer the lab puts in front of a deployment; kubernetes-validate from
# PyPI, in a venv under target/, which checks the Kubernetes export).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v patroni >/dev/null 2>&1 || missing+=(patroni)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> installing ${missing[*]} (the tests start throwaway servers and Patroni clusters from them, check metrics with promtool, and drive the dashboard in headless Chromium and put HAProxy in front of deployments)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The Kubernetes export's manifests are checked offline against the API schemas; the version is
# pinned because it decides which Kubernetes release the schemas are of.
kubernetes_validate=target/tools/kubernetes-validate
if [ ! -x "$kubernetes_validate/bin/kubernetes-validate" ]; then
  echo "==> installing kubernetes-validate into $kubernetes_validate (the Kubernetes export's schema check)"
  rm -rf "$kubernetes_validate"
  python3 -m venv "$kubernetes_validate"
  "$kubernetes_validate/bin/pip" install -q kubernetes-validate==1.37.0
fi
export MERIDIAN_REQUIRE_KUBERNETES_VALIDATE=1

# The browser and load balancer tests skip themselves where Chromium or HAProxy is missing;
# here they were just installed, so a missing one is a failure, never a silent pass.
export MERIDIAN_REQUIRE_BROWSER=1
export MERIDIAN_REQUIRE_HAPROXY=1

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  echo "==> cargo-nextest not found; using cargo test"
  cargo test --workspace --no-fail-fast "$@"
fi
