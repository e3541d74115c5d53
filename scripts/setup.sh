#!/usr/bin/env bash
# One-time setup on a fresh Debian 12 machine: system packages, npm
# dependencies, the native engine, the TypeScript build and the test workloads.
# Idempotent: packages already present are not reinstalled.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

need=()
command -v gcc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)
command -v ip >/dev/null || need+=(iproute2)
command -v python3 >/dev/null || need+=(python3)
command -v redis-server >/dev/null || need+=(redis-server)
command -v nginx >/dev/null || need+=(nginx-light)
command -v nft >/dev/null || [ -x /usr/sbin/nft ] || need+=(nftables)
# iptables-legacy: its NFQUEUE target holds peers' packets during a handoff on one host
[ -x /usr/sbin/iptables-legacy ] || need+=(iptables)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian starts services it installs; phaul's tests start their own.
for s in redis-server nginx; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$s" 2>/dev/null; then systemctl stop "$s" || true; fi
done
# Likewise the cluster the postgresql package just made (not one that was there).
if [[ " ${need[*]} " == *" postgresql "* ]] && command -v pg_lsclusters >/dev/null; then
  pg_lsclusters --no-header 2>/dev/null | awk '$4 == "online" { print $1, $2 }' | while read -r v c; do pg_ctlcluster "$v" "$c" stop || true; done
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo (Rust 1.70 or newer) is required to build native/" >&2
  exit 1
fi

# npm ci when the lock file is usable; some npm setups (omit-lockfile-registry-resolved)
# write locks that npm ci then rejects for other platforms' optional packages.
if ! { [ -f package-lock.json ] && npm ci --no-audit --no-fund --loglevel=error 2>/dev/null; }; then
  npm install --no-audit --no-fund --loglevel=error
fi
npm run --silent build
