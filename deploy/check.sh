#!/usr/bin/env bash
# Validates everything under deploy/, on a fresh Debian machine with only package registries:
#
#   systemd    systemd-analyze verify on the unit (ExecStart pointed at the built binary), with
#              any message it prints counted as a failure; systemd-analyze security --offline
#   kubernetes kubernetes-validate --strict (Kubernetes 1.30 and 1.37 schemas) on every file
#              kustomization.yaml lists, which must be every manifest in deploy/kubernetes
#   configs    `wsgate check --config` on every wsgate config: the ConfigMap's data, the
#              systemd example, the one baked into the image
#   docker     hadolint, and check.py: instructions, non-root numeric USER, COPY sources kept
#              by the ignore list, and the builder's two cargo layers replayed against the repo
#   aws        cfn-lint on the CloudFormation examples
#   haproxy    haproxy -c, nginx -t (servers pointed at 127.0.0.1); skipped when not installed
#   nginx      (--install-lb-tools apt-installs both first)
#   timings    check.py consistency: drain_delay, shutdown_grace, TimeoutStopSec,
#              terminationGracePeriodSeconds, LB intervals, deregistration and idle timeouts
#   shell      shellcheck on this script
#
# Python tools go to deploy/.venv (deploy/requirements.txt, pinned). The binary is
# target/debug/wsgate, built with `cargo build` (a no-op when current); WSGATE_BIN overrides.
# Ends with "deploy: N passed, N failed, N skipped"; exit status 1 if anything failed.
set -euo pipefail

cd "$(dirname "$0")/.."
INSTALL_LB_TOOLS=0
for arg in "$@"; do
  case "$arg" in
    --install-lb-tools) INSTALL_LB_TOOLS=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "deploy/check.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

VENV=deploy/.venv
PY="$VENV/bin/python"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
passed=0 failed=0 skipped=0
failures=()

# Runs one check in a subshell with errexit on, so any failing command fails that check only.
# Exit status 77 means skipped.
check() {
  local name=$1 rc start=$SECONDS
  shift
  echo "== $name"
  set +e
  (set -euo pipefail; "$@")
  rc=$?
  set -e
  case $rc in
    0) passed=$((passed + 1)); echo "   ok ($((SECONDS - start))s)" ;;
    77) skipped=$((skipped + 1)) ;;
    *) failed=$((failed + 1)); failures+=("$name"); echo "   FAILED: $name" ;;
  esac
}

skip() {
  echo "   skipped: $*"
  exit 77
}

# --- setup -------------------------------------------------------------------------------------

apt_lists() {
  [ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit 2>/dev/null)" ] || apt-get update -qq
}

setup_venv() {
  if [ ! -x "$PY" ]; then
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
      # Debian's own python3 keeps venv (ensurepip) in a package of its own.
      rm -rf "$VENV"
      echo "   apt-get install python3-venv"
      apt_lists
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$VENV"
    fi
  fi
  if ! cmp -s deploy/requirements.txt "$VENV/.requirements"; then
    echo "   pip install -r deploy/requirements.txt"
    "$PY" -m pip install --disable-pip-version-check -q -r deploy/requirements.txt
    cp deploy/requirements.txt "$VENV/.requirements"
  fi
}

build_wsgate() {
  if [ -n "${WSGATE_BIN:-}" ]; then
    [ -x "$WSGATE_BIN" ] || { echo "   WSGATE_BIN=$WSGATE_BIN is not executable"; exit 1; }
  else
    cargo build --quiet --bin wsgate
  fi
}

install_lb_tools() {
  [ "$INSTALL_LB_TOOLS" = 1 ] || skip "pass --install-lb-tools to apt-get install haproxy and nginx"
  if command -v haproxy >/dev/null && command -v nginx >/dev/null; then
    echo "   haproxy and nginx are installed"
    return
  fi
  # policy-rc.d keeps the packages from starting their services while installing.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >"$TMP/policy-rc.d"
    install -m 0755 "$TMP/policy-rc.d" /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  echo "   apt-get install haproxy nginx"
  apt_lists
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy nginx >/dev/null
}

# --- checks ------------------------------------------------------------------------------------

check_systemd() {
  command -v systemd-analyze >/dev/null || { echo "   systemd-analyze not found (apt-get install systemd)"; exit 1; }
  local bin unit out
  bin=$(realpath "${WSGATE_BIN:-target/debug/wsgate}")
  mkdir -p "$TMP/systemd"
  unit="$TMP/systemd/wsgate.service"
  # verify needs every Exec binary to exist: point them at the one just built.
  sed "s#/usr/local/bin/wsgate#$bin#g" deploy/systemd/wsgate.service >"$unit"
  grep -q "^ExecStart=$bin " "$unit"
  # verify exits 0 on unknown keys and bad values, only printing them: any output fails.
  out=$(systemd-analyze verify "$unit" 2>&1) || { echo "$out"; exit 1; }
  if [ -n "$out" ]; then
    echo "$out"
    echo "   systemd-analyze verify printed the messages above"
    exit 1
  fi
  echo "   systemd-analyze verify: clean"
  # Exposure 0 (locked down) to 10 (unprotected); the unit is at 1.6. 2.0 is the ceiling.
  out=$(systemd-analyze security --offline=yes --threshold=20 --no-pager "$unit" 2>&1) || {
    echo "$out" | grep -F '✗' || true
    echo "$out" | tail -n 1
    exit 1
  }
  echo "   $(echo "$out" | grep -o 'Overall exposure level.*')"
}

check_kubernetes() {
  local files
  files=$("$PY" deploy/check.py kustomize-resources deploy/kubernetes)
  # shellcheck disable=SC2086 # one file a line, no spaces in them
  for version in 1.30.0 1.37.0; do
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" $files
    echo "   kubernetes-validate --strict -k $version: $(echo "$files" | wc -l) files"
  done
  if command -v kubectl >/dev/null; then
    kubectl kustomize deploy/kubernetes >"$TMP/kustomized.yaml"
    "$VENV/bin/kubernetes-validate" --strict --quiet -k 1.37.0 "$TMP/kustomized.yaml"
    echo "   kubectl kustomize output validates too"
  fi
}

check_configs() {
  local bin=${WSGATE_BIN:-target/debug/wsgate}
  # The ConfigMap's copy goes where the pod would have it, minus /etc.
  mkdir -p "$TMP/configmap"
  "$PY" deploy/check.py configmap-extract deploy/kubernetes/configmap.yaml "$TMP/configmap/wsgate.yaml"
  for config in "$TMP/configmap/wsgate.yaml" deploy/systemd/wsgate.yaml deploy/docker/wsgate.yaml; do
    "$bin" check --config "$config" | sed "s#$TMP/configmap/wsgate.yaml#deploy/kubernetes/configmap.yaml data[wsgate.yaml]#; s/^/   /"
  done
}

check_docker() {
  "$VENV/bin/hadolint" --failure-threshold info deploy/docker/Dockerfile
  echo "   hadolint: clean"
  "$PY" deploy/check.py dockerfile
  echo "   instructions, USER, ignore list and cargo layers: ok"
}

check_aws() {
  "$VENV/bin/cfn-lint" deploy/lb/aws-alb.yaml deploy/lb/aws-nlb.yaml
  echo "   cfn-lint: clean"
}

# HAProxy and nginx refuse host names they cannot resolve: point every server at 127.0.0.1.
check_haproxy() {
  command -v haproxy >/dev/null || skip "haproxy not installed"
  local out
  sed -E 's/^(\s*server\s+\S+\s+)[^ :]+:([0-9]+)/\1127.0.0.1:\2/' deploy/lb/haproxy.cfg >"$TMP/haproxy.cfg"
  out=$(haproxy -c -f "$TMP/haproxy.cfg" 2>&1) || { echo "$out"; exit 1; }
  if echo "$out" | grep -q -e WARNING -e ALERT; then echo "$out"; exit 1; fi
  echo "   $(haproxy -v | head -n 1): $out"
}

check_nginx() {
  command -v nginx >/dev/null || skip "nginx not installed"
  local out dir="$TMP/nginx"
  mkdir -p "$dir/logs"
  sed -E 's/^(\s*server\s+)[^ :;]+:([0-9]+)/\1127.0.0.1:\2/' deploy/lb/nginx.conf >"$dir/wsgate.conf"
  # The example is an http-context snippet (conf.d/): wrap it like nginx.conf would.
  cat >"$dir/nginx.conf" <<EOF
pid $dir/nginx.pid;
error_log $dir/logs/error.log;
events {}
http {
    access_log off;
    include $dir/wsgate.conf;
}
EOF
  out=$(nginx -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" 2>&1) || { echo "$out"; exit 1; }
  if [ -n "$out" ]; then echo "$out"; exit 1; fi
  echo "   $(nginx -v 2>&1): syntax ok"
}

check_timings() {
  "$PY" deploy/check.py consistency
  echo "   drain, grace, stop and LB timeouts agree across files"
}

check_shell() {
  "$VENV/bin/shellcheck" deploy/check.sh
  echo "   shellcheck: clean"
}

# --- run ---------------------------------------------------------------------------------------

check "setup: python tools in $VENV" setup_venv
check "setup: build wsgate" build_wsgate
if [ "$failed" -gt 0 ]; then
  echo "deploy: $passed passed, $failed failed, $skipped skipped"
  exit 1
fi
check "setup: haproxy and nginx" install_lb_tools
check "systemd unit" check_systemd
check "kubernetes manifests" check_kubernetes
check "wsgate configs" check_configs
check "Dockerfile" check_docker
check "AWS load balancer templates" check_aws
check "haproxy config" check_haproxy
check "nginx config" check_nginx
check "timings and ports across files" check_timings
check "check.sh itself" check_shell

[ "$failed" -eq 0 ] || printf '   failed: %s\n' "${failures[@]}"
echo "deploy: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
