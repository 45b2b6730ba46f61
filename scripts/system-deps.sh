#!/usr/bin/env bash
# Install the Debian packages the test suite uses for real, when they are missing.
set -euo pipefail
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v curl >/dev/null 2>&1 || need+=(curl)   # the Slurm hooks post events with curl
[ -x /usr/sbin/munged ] || need+=(munge)   # tests run a private munged; brings libmunge2
[ -x /usr/sbin/haproxy ] || need+=(haproxy)   # collectors behind a real load balancer (e2e)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${need[*]} — install them: sudo apt-get install ${need[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}"
