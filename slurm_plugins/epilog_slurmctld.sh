#!/bin/bash
# jobenergy Slurm EpilogSlurmctld (controller, SlurmUser).
# A hook must never hold up a job: the work (jobenergy-hook.sh, same folder) runs under a
# time limit and logs via `logger -t jobenergy`; its output is discarded and this script
# exits 0, with one exception: when JOBENERGY_SYNC_CMD cannot run as SlurmUser (the hook
# exits 78), the hook's one-line reason goes to stderr and this script exits 78, so that
# slurmctld logs a failed EpilogSlurmctld (that does not affect the job).
err=$(/usr/bin/timeout -k 2 15 /bin/bash "${BASH_SOURCE[0]%/*}/jobenergy-hook.sh" epilog_slurmctld </dev/null 2>&1 >/dev/null)
if [ $? -eq 78 ]; then
  printf '%s\n' "${err##*$'\n'}" >&2
  exit 78
fi
exit 0
