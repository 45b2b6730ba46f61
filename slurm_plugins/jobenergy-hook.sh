#!/bin/bash
# jobenergy Slurm hook: one script, four roles (prolog | epilog | prolog_slurmctld |
# epilog_slurmctld), called by the thin prolog.sh/epilog.sh/... wrappers under `timeout`.
#
#   prolog            (node, root)  write <gpu_map_dir>/<job_id> = SLURM_JOB_GPUS (empty for
#                                   CPU jobs) and start=<now> for the agent; send a start
#                                   event with the GPUs
#   epilog            (node, root)  add end=<now> to the map; send an end event; remove the
#                                   map a few seconds later
#                                   (JOBENERGY_GPU_MAP_LINGER_S, longer than the agent's
#                                   interval_s: its next sample must still see it)
#   prolog_slurmctld  (controller, SlurmUser)  send a start event with the full metadata
#   epilog_slurmctld  (controller, SlurmUser)  send an end event
# After the end event, JOBENERGY_SYNC_CMD (sacct enrichment + AdminComment, e.g.
# `jobenergy slurm sync --jobs "$SLURM_JOB_ID" --wait 120`) is started in the background from
# the role named by JOBENERGY_SYNC_FROM: epilog_slurmctld (default; SlurmUser may modify jobs)
# or epilog (root on the job's first node; for installs SlurmUser cannot run).
#
# Events are JSON bodies of POST /api/v1/jobs/events (core/schema.py JobEvent). One that
# cannot be delivered (collector down, timeout, 5xx) is kept as a file in the outbox and
# re-sent by the next hook run that reaches the collector, or by `jobenergy slurm sync`.
# Settings: /etc/jobenergy/slurm-hooks.env (bash syntax, sourced; see deploy/).
# Logs go to syslog through `logger -t jobenergy`. Exit status is 0, except 78 (EX_CONFIG)
# when JOBENERGY_SYNC_CMD's program is missing or not executable by the user the hook runs
# as (SlurmUser cannot run a venv under /root): then it also prints one line to stderr, and
# the epilog_slurmctld wrapper exits non-zero so that slurmctld's log shows it (the job is not
# affected). The node wrappers still exit 0: a failing Epilog would drain the node.

JE_ROLE=${1:-}
# slurmd and slurmctld run hooks with an environment that holds no PATH.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
JE_CONF=${JOBENERGY_HOOK_CONF:-/etc/jobenergy/slurm-hooks.env}  # users cannot set hook env (SPANK vars are prefixed)
JOBENERGY_URL=http://127.0.0.1:8080
JOBENERGY_CLUSTER=
JOBENERGY_GPU_MAP_DIR=/run/jobenergy/gpus/${SLURMD_NODENAME:-$(hostname -s)}  # the agent's per-node default
JOBENERGY_OUTBOX=/var/spool/jobenergy/outbox
JOBENERGY_CURL_TIMEOUT_S=3
JOBENERGY_GPU_MAP_LINGER_S=3
JOBENERGY_FLUSH_MAX=20
JOBENERGY_SYNC_CMD=
JOBENERGY_SYNC_FROM=epilog_slurmctld
# shellcheck disable=SC1090
[ -r "$JE_CONF" ] && . "$JE_CONF"
CLUSTER=${JOBENERGY_CLUSTER:-${SLURM_CLUSTER_NAME:-default}}
JOB=${SLURM_JOB_ID:-}

je_log() { logger -t jobenergy -p user.notice -- "$JE_ROLE job_id=$JOB $*" 2>/dev/null; }

# JSON string: escape \ and ", turn tab/newline/CR into escapes, drop other control bytes
# and invalid UTF-8.
je_str() {
  local s=$1
  s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\t'/\\t}; s=${s//$'\n'/\\n}; s=${s//$'\r'/\\r}
  # Invalid UTF-8 (users' bytes in job names) would make the whole event unparsable: drop it.
  s=$(printf '%s' "$s" | tr -d '\000-\010\013\014\016-\037' | { iconv -c -f UTF-8 -t UTF-8 2>/dev/null || cat; })
  printf '"%s"' "$s"
}

# JSON list of strings from words.
je_list() {
  local out="" w
  for w in "$@"; do out+="${out:+,}$(je_str "$w")"; done
  printf '[%s]' "$out"
}

# Tags: SPANK options (--energy-model/--energy-phase/--energy-tag) and Slurm array/het ids.
je_tags() {
  local out="" kv k v
  local IFS=';'
  for kv in ${SPANK_ENERGY_TAGS:-}; do
    k=${kv%%=*}; v=${kv#*=}
    [ -n "$k" ] && [ "$k" != "$kv" ] && out+="${out:+,}$(je_str "$k"):$(je_str "$v")"
  done
  unset IFS
  [ -n "${SPANK_ENERGY_MODEL:-}" ] && out+="${out:+,}\"model\":$(je_str "$SPANK_ENERGY_MODEL")"
  [ -n "${SPANK_ENERGY_PHASE:-}" ] && out+="${out:+,}\"phase\":$(je_str "$SPANK_ENERGY_PHASE")"
  [ -n "${SLURM_ARRAY_JOB_ID:-}" ] && out+="${out:+,}\"array_job_id\":$(je_str "$SLURM_ARRAY_JOB_ID")"
  [ -n "${SLURM_ARRAY_TASK_ID:-}" ] && out+="${out:+,}\"array_task_id\":$(je_str "$SLURM_ARRAY_TASK_ID")"
  local het=${SLURM_HET_JOB_ID:-${SLURM_PACK_JOB_ID:-}}
  [ -n "$het" ] && out+="${out:+,}\"het_job_id\":$(je_str "$het")"
  local off=${SLURM_HET_JOB_OFFSET:-${SLURM_PACK_JOB_OFFSET:-}}
  [ -n "$off" ] && out+="${out:+,}\"het_job_offset\":$(je_str "$off")"
  printf '{%s}' "$out"
}

# je_event start|end [extra JSON members]: print the event body.
je_event() {
  local kind=$1 extra=${2:-} body nodes
  body="\"cluster\":$(je_str "$CLUSTER"),\"job_id\":$(je_str "$JOB"),\"event\":\"$kind\""
  body+=",\"time\":$(date +%s.%N)"
  [ -n "${SLURM_JOB_USER:-}" ] && body+=",\"user\":$(je_str "$SLURM_JOB_USER")"
  [[ "${SLURM_JOB_UID:-}" =~ ^[0-9]+$ ]] && body+=",\"uid\":$SLURM_JOB_UID"
  [ -n "${SLURM_JOB_ACCOUNT:-}" ] && body+=",\"account\":$(je_str "$SLURM_JOB_ACCOUNT")"
  [ -n "${SLURM_JOB_PARTITION:-}" ] && body+=",\"partition\":$(je_str "$SLURM_JOB_PARTITION")"
  [ -n "${SLURM_JOB_NAME:-}" ] && body+=",\"name\":$(je_str "$SLURM_JOB_NAME")"
  [ -n "${SLURM_JOB_COMMENT:-}" ] && body+=",\"comment\":$(je_str "$SLURM_JOB_COMMENT")"
  nodes=${SLURM_JOB_NODELIST:-${SLURM_NODELIST:-}}
  if [ -n "$nodes" ]; then
    # shellcheck disable=SC2046
    body+=",\"nodes\":$(je_list $(timeout 2 scontrol show hostnames "$nodes" 2>/dev/null || echo "$nodes"))"
  fi
  [ -n "$extra" ] && body+=",$extra"
  body+=",\"tags\":$(je_tags)"
  printf '{%s}\n' "$body"
}

# je_post FILE: 0 = delivered (or rejected for good: 4xx, logged), 1 = keep for later.
je_post() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time "$JOBENERGY_CURL_TIMEOUT_S" \
         -H 'Content-Type: application/json' --data-binary "@$1" \
         "${JOBENERGY_URL%/}/api/v1/jobs/events" 2>/dev/null)
  case "$code" in
    2??) return 0 ;;
    4??) je_log "event rejected http=$code file=$1 body=$(head -c 300 "$1")"; return 0 ;;
    *) return 1 ;;
  esac
}

# je_send BODY: deliver now, else keep it in the outbox; after a success, drain the outbox.
# The outbox is 0700 and its events 0600 whatever the site's umask: they hold job names,
# comments and tags, which Slurm shows only to whom PrivateData allows.
je_send() {
  local tmp name f n=0
  name="$(date +%s%N)-${JOB}-${JE_ROLE}-${SLURMD_NODENAME:-ctld}-$$.json"
  tmp="$JOBENERGY_OUTBOX/.${name}.tmp"
  ( umask 077 && mkdir -p "$JOBENERGY_OUTBOX" && printf '%s' "$1" > "$tmp" ) 2>/dev/null \
    || { je_log "cannot write $tmp"; return; }
  if je_post "$tmp"; then
    rm -f "$tmp"
    for f in "$JOBENERGY_OUTBOX"/*.json; do
      [ -e "$f" ] && [ "$n" -lt "$JOBENERGY_FLUSH_MAX" ] || break
      n=$((n + 1))
      je_post "$f" && rm -f "$f" || break
    done
  else
    mv -f "$tmp" "$JOBENERGY_OUTBOX/$name" && je_log "collector unreachable url=$JOBENERGY_URL: event kept in $JOBENERGY_OUTBOX/$name"
  fi
}

je_gpu_json() {
  local g out=()
  local IFS=','
  for g in ${SLURM_JOB_GPUS:-}; do out+=("${SLURMD_NODENAME:-$(hostname -s)}:$g"); done
  unset IFS
  [ ${#out[@]} -gt 0 ] && printf '"gpus":%s' "$(je_list "${out[@]}")"
}

# The program JOBENERGY_SYNC_CMD runs: its first word after any VAR=value, one level of
# quotes removed (a path with spaces is not supported).
je_sync_program() {
  local -a words
  local w
  read -r -a words <<< "$JOBENERGY_SYNC_CMD"
  for w in "${words[@]}"; do
    [[ "$w" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] && continue
    w=${w#[\"\']}; w=${w%[\"\']}
    printf '%s' "$w"
    return
  done
}

# True when this user may run PROGRAM (a path: an executable file; a name: found in PATH).
je_can_run() {
  local prog=$1
  [ -n "$prog" ] || return 1
  if [[ "$prog" == */* ]]; then
    [ -f "$prog" ] && [ -x "$prog" ]
  else
    command -v -- "$prog" >/dev/null 2>&1
  fi
}

# Start JOBENERGY_SYNC_CMD detached (own session: outlives this hook and its timeout), or
# say loudly why it cannot run (syslog, stderr, exit status 78).
je_sync() {
  [ -n "$JOBENERGY_SYNC_CMD" ] && [ "$JOBENERGY_SYNC_FROM" = "$JE_ROLE" ] || return 0
  if [ "$JE_ROLE" = epilog ]; then   # once per job: on its first node only
    local first
    first=$(timeout 2 scontrol show hostnames "${SLURM_NODELIST:-}" 2>/dev/null | head -1)
    [ -z "$first" ] || [ "$first" = "${SLURMD_NODENAME:-}" ] || return 0
  fi
  local prog msg
  prog=$(je_sync_program)
  if ! je_can_run "$prog"; then
    msg="JOBENERGY_SYNC_CMD cannot run: '$prog' is missing or not executable by user"
    msg+=" $(id -un 2>/dev/null || echo "uid $EUID") (install jobenergy where it can: e.g. a"
    msg+=" venv under /opt/jobenergy, not under /root); AdminComment not written"
    je_log "$msg"
    printf 'jobenergy %s job_id=%s: %s\n' "$JE_ROLE" "$JOB" "$msg" >&2
    JE_STATUS=78
    return 0
  fi
  setsid -f bash -c "$JOBENERGY_SYNC_CMD" </dev/null >/dev/null 2>&1
}

je_exit_json() {
  [ -n "${SLURM_JOB_EXIT_CODE2:-}" ] && printf '"exit_code":%s' "$(je_str "$SLURM_JOB_EXIT_CODE2")"
}

JE_STATUS=0
[ -n "$JOB" ] || { je_log "no SLURM_JOB_ID"; exit 0; }
case "$JE_ROLE" in
  prolog)
    # Every job gets a map file (empty without GPUs): it also tells the agent that a job
    # shorter than one sample interval ran here (agent/jobmap.py).
    # Line 1: the GPUs; start=: when the job began here (agent/jobmap.py).
    # Modes: folder 0755, files 0644, root's, whatever the site's umask. Nobody else may
    # write them (the agent trusts them); anyone may read them: they hold job ids, GPU ids and
    # times, which squeue and scontrol show every user anyway.
    ( umask 022 && mkdir -p "$JOBENERGY_GPU_MAP_DIR" && rm -f "$JOBENERGY_GPU_MAP_DIR/.$JOB.tmp" \
      && printf '%s\nstart=%s\n' "${SLURM_JOB_GPUS:-}" "$(date +%s.%N)" > "$JOBENERGY_GPU_MAP_DIR/.$JOB.tmp" \
      && mv -f "$JOBENERGY_GPU_MAP_DIR/.$JOB.tmp" "$JOBENERGY_GPU_MAP_DIR/$JOB" ) \
      || je_log "cannot write job map in $JOBENERGY_GPU_MAP_DIR"
    je_send "$(je_event start "$(je_gpu_json)")" ;;
  epilog)
    if [ -e "$JOBENERGY_GPU_MAP_DIR/$JOB" ]; then
      # end=: the job pays until now, not while the file lingers for the agent's next sample.
      ( umask 022 && rm -f "$JOBENERGY_GPU_MAP_DIR/.$JOB.tmp" \
        && { head -c 4000 "$JOBENERGY_GPU_MAP_DIR/$JOB"; printf 'end=%s\n' "$(date +%s.%N)"; } \
        > "$JOBENERGY_GPU_MAP_DIR/.$JOB.tmp" \
        && mv -f "$JOBENERGY_GPU_MAP_DIR/.$JOB.tmp" "$JOBENERGY_GPU_MAP_DIR/$JOB" )
      setsid -f bash -c 'sleep "$1"; rm -f "$2"' _ "$JOBENERGY_GPU_MAP_LINGER_S" \
        "$JOBENERGY_GPU_MAP_DIR/$JOB" </dev/null >/dev/null 2>&1
    fi
    je_send "$(je_event end "$(je_exit_json)")"
    je_sync ;;
  prolog_slurmctld)
    je_send "$(je_event start)" ;;
  epilog_slurmctld)
    je_send "$(je_event end "$(je_exit_json)")"
    je_sync ;;
  *) je_log "unknown role '$JE_ROLE'" ;;
esac
exit "$JE_STATUS"
