#!/usr/bin/env bash
# Install the Debian packages the test suite uses for real, when they are missing.
set -euo pipefail
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v curl >/dev/null 2>&1 || need+=(curl)   # the Slurm hooks post events with curl
[ -x /usr/sbin/munged ] || need+=(munge)   # tests run a private munged; brings libmunge2
[ -x /usr/sbin/haproxy ] || need+=(haproxy)   # collectors behind a real load balancer (e2e)
[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || need+=(chromium chromium-driver)   # web pages (tests/web)
[ -f /usr/include/slurm/spank.h ] || need+=(libslurm-dev)   # setup builds the SPANK plugin
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)   # units: verify, security
command -v ipmi_sim >/dev/null 2>&1 || need+=(openipmi)   # a real IPMI BMC (tests/agent/sensors/test_bmc_ipmi.py)
command -v ipmitool >/dev/null 2>&1 || need+=(ipmitool)   # the agent reads DCMI power with it
[ -f /usr/include/OpenIPMI/mcserv.h ] || need+=(libopenipmi-dev)   # builds the emulator's DCMI module
command -v openssl >/dev/null 2>&1 || need+=(openssl)   # TLS test certificates
command -v promtool >/dev/null 2>&1 || need+=(prometheus)   # rules, scrape config, dashboards
command -v lua5.1 >/dev/null 2>&1 || need+=(lua5.1)   # the job_submit.lua budget script (Slurm links liblua5.1)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${need[*]} — install them: sudo apt-get install ${need[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}"
if [[ " ${need[*]} " == *" prometheus "* ]]; then
  # The package starts a Prometheus on :9090; the tests run their own on free ports.
  if [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  else
    /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  fi
fi
