#!/bin/bash
# jobenergy Slurm hook: one script, four roles (prolog | epilog | prolog_slurmctld |
# epilog_slurmctld), called by the thin prolog.sh/epilog.sh/... wrappers under `timeout`.
#
#   prolog            (node, root)  write <gpu_map_dir>/<job_id> = SLURM_JOB_GPUS (empty for
#                                   CPU jobs), start=<now> and, for a job with
#                                   --energy-limit, energy_limit_uj= and nodes= for the agent;
#                                   send a start event with the GPUs
#   epilog            (node, root)  add end=<now> to the map; send an end event (with what
#                                   the agent did at the job's energy limit on this node:
#                                   <limit_dir>/<job_id>, agent/energy_limits.py); remove the
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
# cannot be delivered is kept as a file in the outbox and re-sent by the next hook run that
# reaches the collector, or by `jobenergy slurm sync`: collector down, timeout, 5xx, 401 or
# 403 (the event is fine, the credentials are not: logged once with the server's reason),
# 429, or refused here (no credential, unsafe token file, plain HTTP off loopback). Another
# 4xx is the event's fault: logged and dropped.
#
# Every post is authenticated (README "Security model", core/request_auth.py), each one
# (outbox re-sends too) with a fresh credential:
#   MUNGE (default): `Authorization: MUNGE <cred>`, whose payload is
#     "jobenergy-v1 POST <target> <sha256 hex of the body file as sent>", target being the
#     path curl sends: JOBENERGY_URL's path (if any) + /api/v1/jobs/events. The server gives
#     root and SlurmUser the hooks' rights.
#   token: `Authorization: Bearer <first line of JOBENERGY_TOKEN_FILE>`, a
#     `jobenergy auth token --role hooks` token; the file must be 0600 (or 0400), else the
#     post is refused here.
# Credentials never appear in a command line (/proc/*/cmdline is world-readable): headers
# reach curl on its stdin (`-H @-`), written by bash's builtin printf.
#
# Settings: /etc/jobenergy/slurm-hooks.env (bash syntax, sourced; see deploy/):
#   JOBENERGY_URL               collector, http(s)://host[:port][/prefix]
#   JOBENERGY_CLUSTER           cluster name in events (default: SLURM_CLUSTER_NAME)
#   JOBENERGY_AUTH              munge | token | none (no header; for `--auth none` servers);
#                               empty (default): token when JOBENERGY_TOKEN_FILE is set,
#                               else munge
#   JOBENERGY_TOKEN_FILE        file whose first line is a hooks token (mode 0600)
#   JOBENERGY_MUNGE_SOCKET      munged's socket (default /run/munge/munge.socket.2)
#   JOBENERGY_CA_FILE           CA bundle for https:// (curl --cacert); default: system store
#   JOBENERGY_ALLOW_INSECURE    1: allow plain http:// to a host other than loopback
#                               (127.0.0.0/8, ::1, localhost); otherwise such posts are
#                               refused and the event kept
#   JOBENERGY_GPU_MAP_DIR, JOBENERGY_LIMIT_DIR (the agents' limit_dir), JOBENERGY_OUTBOX, JOBENERGY_CURL_TIMEOUT_S,
#   JOBENERGY_GPU_MAP_LINGER_S, JOBENERGY_FLUSH_MAX, JOBENERGY_SYNC_CMD, JOBENERGY_SYNC_FROM
#   JOBENERGY_CURL              the curl program (default: curl in PATH); for tests and
#                               packaging
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
JOBENERGY_LIMIT_DIR=/run/jobenergy/limits/${SLURMD_NODENAME:-$(hostname -s)}  # the agent's limit_dir default
JOBENERGY_OUTBOX=/var/spool/jobenergy/outbox
JOBENERGY_CURL_TIMEOUT_S=3
JOBENERGY_GPU_MAP_LINGER_S=3
JOBENERGY_FLUSH_MAX=20
JOBENERGY_SYNC_CMD=
JOBENERGY_SYNC_FROM=epilog_slurmctld
JOBENERGY_AUTH=
JOBENERGY_TOKEN_FILE=
JOBENERGY_MUNGE_SOCKET=/run/munge/munge.socket.2
JOBENERGY_CA_FILE=
JOBENERGY_ALLOW_INSECURE=0
JOBENERGY_CURL=curl
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

# The job's --energy-limit in µJ (SPANK_ENERGY_LIMIT_UJ), when it is one: users' clients
# set SPANK_* variables, so only digits within the plugin's bounds (1 J .. 1 GWh) count.
je_limit_uj() {
  local v=${SPANK_ENERGY_LIMIT_UJ:-}
  # 19 digits on both sides: string order is numeric order (bash's integers would wrap).
  # shellcheck disable=SC2071
  [[ "$v" =~ ^[1-9][0-9]{6,18}$ ]] && { (( ${#v} < 19 )) || [[ "$v" < 3600000000000000001 ]]; } \
    && printf '%s' "$v"
}

# What this node's agent did at the job's energy limit (<limit_dir>/<job>, root's, 0600:
# warned_uj= / exceeded_uj= / cancelled_uj=, the job's energy here when it acted; budget_id=
# when a budget's running policy, not the job's --energy-limit, took the last action), as tags.
je_limit_tags() {
  local f=$JOBENERGY_LIMIT_DIR/$JOB line k v out="" action="" budget=""
  [ -f "$f" ] && [ ! -L "$f" ] || return 0
  while IFS= read -r line; do
    k=${line%%=*}; v=${line#*=}
    case "$k" in warned_uj|exceeded_uj|cancelled_uj|budget_id) ;; *) continue ;; esac
    [[ "$v" =~ ^[0-9]{1,19}$ ]] || continue
    if [ "$k" = budget_id ]; then budget=$v; continue; fi
    out+=",\"energy_limit_$k\":\"$v\""
    action=${k%_uj}   # the file lists them in order: the last is the strongest
  done < <(head -c 4000 -- "$f")
  [ -n "$action" ] && out+=",\"energy_limit_action\":\"$action\""
  [ -n "$action" ] && [ -n "$budget" ] && out+=",\"energy_limit_budget_id\":\"$budget\""
  printf '%s' "${out#,}"
}

# Tags: SPANK options (--energy-model/--energy-phase/--energy-tag/--energy-limit), Slurm
# array/het ids, and on a node's epilog what the agent did at the energy limit.
je_tags() {
  local out="" kv k qk v limit
  local IFS=';'
  for kv in ${SPANK_ENERGY_TAGS:-}; do
    k=${kv%%=*}; v=${kv#*=}
    if [ -z "$k" ] || [ "$k" = "$kv" ]; then continue; fi
    # energy_limit_* tags are the agent's and the plugin's record, the array / het ids
    # Slurm's: users cannot forge them. Checked on the key as sent (je_str drops control
    # bytes and invalid UTF-8, so "energy\x01_limit..." must not pass as something else).
    qk=$(je_str "$k")
    case "${qk,,}" in
      '"energy_limit'*|'"array_job_id"'|'"array_task_id"'|'"het_job_id"'|'"het_job_offset"') continue ;;
    esac
    out+="${out:+,}$qk:$(je_str "$v")"
  done
  unset IFS
  limit=$(je_limit_uj)
  [ -n "$limit" ] && out+="${out:+,}\"energy_limit_uj\":\"$limit\""
  if [ "$JE_ROLE" = epilog ]; then
    kv=$(je_limit_tags)
    [ -n "$kv" ] && out+="${out:+,}$kv"
  fi
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

# je_target: check JOBENERGY_URL against the transport rule and set JE_URL (what curl is
# given) and JE_TARGET (the path curl sends on the request line: the URL's own path, if any,
# + /api/v1/jobs/events; curl runs with --path-as-is, so it sends exactly that). 1 (JE_WHY
# set): unusable URL, or plain HTTP to a host other than loopback without
# JOBENERGY_ALLOW_INSECURE=1.
je_target() {
  local url=${JOBENERGY_URL%/} scheme rest authority host path
  local path_re="^[A-Za-z0-9._~!\$&'()*+,;=:@%/-]*\$"
  scheme=${url%%://*}; scheme=${scheme,,}
  rest=${url#*://}
  if [ "$rest" = "$url" ] || { [ "$scheme" != http ] && [ "$scheme" != https ]; }; then
    JE_WHY="JOBENERGY_URL=$JOBENERGY_URL is not an http:// or https:// URL"; return 1
  fi
  authority=${rest%%/*}
  path=
  [ "$authority" = "$rest" ] || path=/${rest#*/}
  if [[ "$authority" == *[?#]* ]] || ! [[ "$path" =~ $path_re ]]; then
    JE_WHY="JOBENERGY_URL=$JOBENERGY_URL: only scheme://host[:port][/path], the path in"
    JE_WHY+=" RFC 3986 characters (no query, fragment or spaces)"; return 1
  fi
  authority=${authority##*@}
  if [[ "$authority" == \[* ]]; then
    host=${authority#\[}; host=${host%%]*}
  else
    host=${authority%%:*}
  fi
  host=${host,,}
  if [ "$scheme" = http ] && [ "$JOBENERGY_ALLOW_INSECURE" != 1 ] \
     && ! [[ "$host" =~ ^(localhost|localhost\.localdomain|::1|127\.[0-9]+\.[0-9]+\.[0-9]+)$ ]]; then
    JE_WHY="refusing plain HTTP to $host (JOBENERGY_URL=$JOBENERGY_URL): credentials and job"
    JE_WHY+=" data would cross the network in clear; use https:// (JOBENERGY_CA_FILE) or set"
    JE_WHY+=" JOBENERGY_ALLOW_INSECURE=1"; return 1
  fi
  JE_URL=$url/api/v1/jobs/events
  JE_TARGET=$path/api/v1/jobs/events
}

# je_token: set JE_TOKEN from JOBENERGY_TOKEN_FILE (its first non-blank line, trimmed, as
# core/request_auth.read_token_file reads it); 1 (JE_WHY set) when the file is unreadable,
# empty, or open to group or others (as ssh does its keys).
je_token() {
  local f=$JOBENERGY_TOKEN_FILE mode line
  JE_TOKEN=
  if [ -z "$f" ]; then JE_WHY="JOBENERGY_AUTH=token needs JOBENERGY_TOKEN_FILE"; return 1; fi
  mode=$(stat -L -c %a -- "$f" 2>/dev/null)
  if [ -z "$mode" ] || ! [ -f "$f" ] || ! [ -r "$f" ]; then
    JE_WHY="cannot read token file $f"; return 1
  fi
  if (( 8#$mode & 8#077 )); then
    JE_WHY="token file $f is readable by others (mode 0$mode): chmod 600 it; nothing sent"
    return 1
  fi
  while IFS= read -r line || [ -n "$line" ]; do
    line=${line#"${line%%[![:space:]]*}"}; line=${line%"${line##*[![:space:]]}"}
    [ -n "$line" ] && break
  done < "$f"
  if [ -z "$line" ] || [[ "$line" == *[[:space:][:cntrl:]]* ]]; then
    JE_WHY="token file $f is empty or its first line is not a token"; return 1
  fi
  JE_TOKEN=$line
}

# je_munge FILE: set JE_CRED to a fresh MUNGE credential for POSTing FILE to JE_TARGET
# (the payload of core/request_auth.munge_payload); 1 (JE_WHY set) when munged refuses or
# is unreachable. The payload goes to munge on its stdin.
je_munge() {
  local digest out line
  JE_CRED=
  digest=$(sha256sum < "$1" 2>/dev/null)
  digest=${digest%% *}
  if ! [[ "$digest" =~ ^[0-9a-f]{64}$ ]]; then JE_WHY="cannot hash $1"; return 1; fi
  out=$(printf 'jobenergy-v1 POST %s %s' "$JE_TARGET" "$digest" \
        | timeout 5 munge -S "$JOBENERGY_MUNGE_SOCKET" 2>&1)
  while IFS= read -r line; do
    if [[ "$line" =~ ^MUNGE:[A-Za-z0-9+/=]+:$ ]]; then JE_CRED=$line; return 0; fi
  done <<< "$out"
  line=${out//[[:cntrl:]]/ }
  JE_WHY="no MUNGE credential from $JOBENERGY_MUNGE_SOCKET: ${line:0:200}"
  return 1
}

# je_auth FILE: set JE_AUTH_LINE, the Authorization header for posting FILE (empty with
# JOBENERGY_AUTH=none); 1 (JE_WHY set) when there is no usable credential.
je_auth() {
  local mode=$JOBENERGY_AUTH
  JE_AUTH_LINE=
  if [ -z "$mode" ]; then
    if [ -n "$JOBENERGY_TOKEN_FILE" ]; then mode=token; else mode=munge; fi
  fi
  case "$mode" in
    none) return 0 ;;
    token) je_token || return 1; JE_AUTH_LINE="Authorization: Bearer $JE_TOKEN" ;;
    munge) je_munge "$1" || return 1; JE_AUTH_LINE="Authorization: MUNGE $JE_CRED" ;;
    *) JE_WHY="JOBENERGY_AUTH=$mode: use munge, token or none"; return 1 ;;
  esac
}

# The server's answer in a temporary file (JE_RESPONSE, removed on exit), for its reason.
JE_RESPONSE=
# shellcheck disable=SC2317  # run by the EXIT trap
je_cleanup() { [ -z "$JE_RESPONSE" ] || rm -f -- "$JE_RESPONSE"; }
trap je_cleanup EXIT
trap 'exit 143' HUP INT TERM   # `timeout` stops us: still remove it

# The server's reason: the first 300 bytes of its answer, control characters dropped.
je_reason() {
  [ -n "$JE_RESPONSE" ] && head -c 300 -- "$JE_RESPONSE" 2>/dev/null | tr -d '\000-\037\177'
}

# je_post FILE: 0 = delivered (or rejected for good: a 4xx other than 401, 403 and 429,
# logged), 1 = keep for later (JE_WHY says why).
je_post() {
  local code status
  local -a opts=()
  JE_WHY=
  je_target && je_auth "$1" || return 1
  if [ -n "$JOBENERGY_CA_FILE" ]; then
    [ -r "$JOBENERGY_CA_FILE" ] || { JE_WHY="cannot read JOBENERGY_CA_FILE=$JOBENERGY_CA_FILE"; return 1; }
    opts+=(--cacert "$JOBENERGY_CA_FILE")
  fi
  [ -n "$JE_RESPONSE" ] || JE_RESPONSE=$(mktemp "$JOBENERGY_OUTBOX/.response.XXXXXX" 2>/dev/null)
  : > "${JE_RESPONSE:-/dev/null}" 2>/dev/null
  # Headers on stdin (-H @-): builtins only, so the credential is in no process's argv.
  code=$({ printf 'Content-Type: application/json\n'
           [ -z "$JE_AUTH_LINE" ] || printf '%s\n' "$JE_AUTH_LINE"; } \
         | "$JOBENERGY_CURL" -s --path-as-is --proto =http,https -o "${JE_RESPONSE:-/dev/null}" \
             -w '%{http_code}' --max-time "$JOBENERGY_CURL_TIMEOUT_S" "${opts[@]}" -H @- \
             --data-binary "@$1" "$JE_URL" 2>/dev/null)
  status=$?
  JE_AUTH_LINE=; JE_TOKEN=; JE_CRED=
  case "$code" in
    2??) return 0 ;;
    401|403)   # the event is fine, the credentials (or the role) are not
      JE_WHY="collector refused the credentials http=$code url=$JE_URL reason=$(je_reason)"
      return 1 ;;
    429) JE_WHY="collector busy http=429 url=$JE_URL reason=$(je_reason)"; return 1 ;;
    4??) je_log "event rejected http=$code file=$1 reason=$(je_reason) body=$(head -c 300 "$1")"
         return 0 ;;
    *) JE_WHY="collector unreachable url=$JE_URL http=${code:-000} curl_exit=$status"
       return 1 ;;
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
    mv -f "$tmp" "$JOBENERGY_OUTBOX/$name" && je_log "$JE_WHY: event kept in $JOBENERGY_OUTBOX/$name"
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
  # The sync talks to the same collector: it gets the hook's transport and credential
  # settings (a variable set on the command's own line still wins).
  JOBENERGY_CA_FILE=$JOBENERGY_CA_FILE JOBENERGY_ALLOW_INSECURE=$JOBENERGY_ALLOW_INSECURE \
    JOBENERGY_TOKEN_FILE=$JOBENERGY_TOKEN_FILE JOBENERGY_MUNGE_SOCKET=$JOBENERGY_MUNGE_SOCKET \
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
    # Modes: folder 0700, files 0600, root's, whatever the site's umask: the agent (root)
    # trusts them, so nobody else may write them, and nobody else needs to read them.
    # energy_limit_uj= and nodes=: the job's --energy-limit, which each node's agent
    # enforces as its even share (agent/energy_limits.py).
    JE_LIMIT=$(je_limit_uj)
    if [ -n "$JE_LIMIT" ]; then
      JE_NODES=$(timeout 2 scontrol show hostnames "${SLURM_JOB_NODELIST:-${SLURM_NODELIST:-}}" 2>/dev/null | wc -l)
      JE_LIMIT=$(printf 'energy_limit_uj=%s\nnodes=%s\n' "$JE_LIMIT" "$(( JE_NODES > 0 ? JE_NODES : 1 ))")
    fi
    ( umask 077 && mkdir -p "$JOBENERGY_GPU_MAP_DIR" && chmod 0700 "$JOBENERGY_GPU_MAP_DIR" \
      && rm -f "$JOBENERGY_GPU_MAP_DIR/.$JOB.tmp" \
      && printf '%s\nstart=%s\n%s' "${SLURM_JOB_GPUS:-}" "$(date +%s.%N)" "${JE_LIMIT:+$JE_LIMIT$'\n'}" > "$JOBENERGY_GPU_MAP_DIR/.$JOB.tmp" \
      && mv -f "$JOBENERGY_GPU_MAP_DIR/.$JOB.tmp" "$JOBENERGY_GPU_MAP_DIR/$JOB" ) \
      || je_log "cannot write job map in $JOBENERGY_GPU_MAP_DIR"
    je_send "$(je_event start "$(je_gpu_json)")" ;;
  epilog)
    if [ -e "$JOBENERGY_GPU_MAP_DIR/$JOB" ]; then
      # end=: the job pays until now, not while the file lingers for the agent's next sample.
      ( umask 077 && rm -f "$JOBENERGY_GPU_MAP_DIR/.$JOB.tmp" \
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
