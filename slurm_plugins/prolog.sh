#!/bin/bash
# jobenergy Slurm Prolog (node, root; slurm.conf Prolog=...).
# A hook must never fail or hold up a job: the work (jobenergy-hook.sh, same folder) runs
# under a time limit, its output is discarded (it logs via `logger -t jobenergy`), and this
# script always exits 0.
/usr/bin/timeout -k 2 15 /bin/bash "${BASH_SOURCE[0]%/*}/jobenergy-hook.sh" prolog </dev/null >/dev/null 2>&1
exit 0
