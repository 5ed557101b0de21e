#!/usr/bin/env bash
# Live-scrape check of the Grafana dashboards and Prometheus alert rules in grafana/.
#
#   scripts/test_observability.sh
#
# 1. installs Prometheus (Debian package `prometheus`, which ships promtool) if missing;
# 2. `promtool check rules` and `promtool test rules` on grafana/alerts/;
# 3. starts fake Telegram Bot API and Feishu Open API servers (scripts/fake_platforms.py), the
#    daemon (tiny model, fault injection on, a small inference queue, a SQLite store and an
#    admin token in the temp folder, 2 inbox attempts, one Telegram webhook bot and one Feishu
#    app pointed at the fakes) on a free loopback port, and Prometheus on another, scraping it
#    every second with the rules loaded;
# 4. drives traffic: chats, a streaming chat, a 404, a 400, an inference-worker crash, a
#    session crash, a message that fails every attempt (retry, dead letter, apology), a
#    duplicate message_id (409), admin API requests (unauthorized, forbidden, ok), a burst
#    that overflows the inference queue (busy), and platform traffic: Telegram webhook updates
#    (right secret, wrong secret 401, a re-delivery) and plain Feishu events (right and wrong
#    verification token 401, a re-delivery), with the fakes answering some sends with 429,
#    5xx and 403 and revoking a Feishu token;
# 5. runs scripts/check_observability.py, which evaluates every dashboard and alert
#    expression through Prometheus and checks every metric name against /metrics;
# 6. checks that the checker fails on copies of dashboards with a misspelt metric.
# Everything started is stopped on exit. Exit status 0 only if all of it passed.
#
# Needs: bash, curl, python3 (standard library), the built daemon
# (target/release/switchboard, or SWITCHBOARD_BIN) and `make setup` (models/tiny, runtime/).
# Environment: SWITCHBOARD_BIN (the daemon), KEEP_WORK=1 (keep the temp folder with the
# configs and logs), OBS_VERBOSE=1 (list every expression checked).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BIN=${SWITCHBOARD_BIN:-$ROOT/target/release/switchboard}
START=$(date +%s)

log() { echo "[observability $(($(date +%s) - START))s] $*" >&2; }
fail() {
    log "FAIL: $*"
    exit 1
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/switchboard-obs.XXXXXX")
DAEMON_PID=
PROM_PID=
FAKE_PID=
POLICY_CREATED=

stop() { # pid name
    local pid=$1 i
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$2 did not stop in 10s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    [ -n "$POLICY_CREATED" ] && rm -f /usr/sbin/policy-rc.d
    stop "$PROM_PID" prometheus
    stop "$DAEMON_PID" switchboard
    stop "$FAKE_PID" fake_platforms.py
    if [ "$rc" -ne 0 ]; then
        for f in daemon.log prometheus.log fake_platforms.log; do
            if [ -s "$WORK/$f" ]; then
                echo "----- last lines of $f -----" >&2
                sed 's/\x1b\[[0-9;]*m//g' "$WORK/$f" | grep -v -E '^ +([0-9]+: |at )' | tail -n 40 >&2
            fi
        done
    fi
    if [ "${KEEP_WORK:-0}" = 1 ]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    log "$([ "$rc" -eq 0 ] && echo PASSED || echo "FAILED (exit $rc)") in $(($(date +%s) - START))s"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_for SECONDS DESCRIPTION COMMAND...: retries COMMAND every 0.5s until it succeeds.
wait_for() {
    local secs=$1 what=$2 deadline
    shift 2
    deadline=$(($(date +%s) + secs))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "timed out after ${secs}s waiting for $what"
        sleep 0.5
    done
}

# prom_has QUERY: true if the instant query returns at least one series.
prom_has() {
    curl -fsS --max-time 5 --data-urlencode "query=$1" "$PROM_URL/api/v1/query" |
        python3 -c 'import json, sys; d = json.load(sys.stdin); sys.exit(0 if d["status"] == "success" and d["data"]["result"] else 1)'
}

# ---------------------------------------------------------------------------------------------
# 1. Prometheus and promtool

install_prometheus() {
    [ "$(id -u)" = 0 ] || fail "promtool/prometheus are missing; install the Debian package 'prometheus' (needs root)"
    command -v apt-get >/dev/null || fail "promtool/prometheus are missing and apt-get is not available"
    log "installing the Debian package prometheus (without starting its service)"
    # Keep the package's maintainer scripts from starting the system service.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        POLICY_CREATED=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -qq </dev/null || fail "apt-get update failed"
    timeout 900 apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confdef \
        -o Dpkg::Options::=--force-confold prometheus </dev/null >"$WORK/apt.log" 2>&1 ||
        { tail -n 20 "$WORK/apt.log" >&2; fail "apt-get install prometheus failed"; }
    if [ -n "$POLICY_CREATED" ]; then
        rm -f /usr/sbin/policy-rc.d
        POLICY_CREATED=
    fi
}

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
    install_prometheus
fi
command -v promtool >/dev/null || fail "promtool not found after installing prometheus"
log "$(prometheus --version 2>&1 | head -n 1)"

# ---------------------------------------------------------------------------------------------
# 2. Static checks of the rule files

shopt -s nullglob
RULE_FILES=("$ROOT"/grafana/alerts/*.yml)
RULE_TESTS=("$ROOT"/grafana/alerts/tests/*.yml)
DASHBOARDS=("$ROOT"/grafana/dashboards/*.json)
shopt -u nullglob
[ ${#RULE_FILES[@]} -gt 0 ] || fail "no rule files in grafana/alerts/"
[ ${#DASHBOARDS[@]} -gt 0 ] || fail "no dashboards in grafana/dashboards/"

log "promtool check rules"
promtool check rules "${RULE_FILES[@]}" || fail "promtool check rules"
if [ ${#RULE_TESTS[@]} -gt 0 ]; then
    log "promtool test rules"
    promtool test rules "${RULE_TESTS[@]}" || fail "promtool test rules"
fi
for f in "${DASHBOARDS[@]}"; do
    python3 -m json.tool "$f" >/dev/null || fail "$f is not valid JSON"
done

# ---------------------------------------------------------------------------------------------
# 3. The daemon

[ -x "$BIN" ] || fail "daemon binary $BIN not found: build it first (cargo build --release)"
[ -d "$ROOT/models/tiny" ] || fail "models/tiny not found: run 'make setup' first"

ADMIN_TOKEN="obs-viewer-$RANDOM$RANDOM"
ADMIN_TOKEN_SHA256=$(printf %s "$ADMIN_TOKEN" | sha256sum | cut -d' ' -f1)

# Fake platform APIs for the Telegram bot and the Feishu app. The first sendMessage is answered
# with 429 (retry_after 1), so the rate-limit series get data.
TG_TOKEN="123456:OBS-token_abc"
TG_SECRET="obs-secret_$RANDOM$RANDOM"
FS_APP_ID=cli_obs_app
FS_APP_SECRET="obs-app-secret-$RANDOM"
FS_VERIFICATION_TOKEN="obs-verification-$RANDOM$RANDOM"
log "starting the fake Telegram and Feishu APIs"
# The interpreter itself (not a wrapper such as a pyenv shim), so that FAKE_PID is the server's
# pid and stopping it on exit does not leave the server running.
PYTHON=$(python3 -c 'import sys; print(sys.executable)')
"$PYTHON" "$ROOT/scripts/fake_platforms.py" --port-file "$WORK/fake_ports.json" --telegram-token "$TG_TOKEN" \
    --telegram-faults 429 --feishu-app-id "$FS_APP_ID" --feishu-app-secret "$FS_APP_SECRET" \
    >"$WORK/fake_platforms.log" 2>&1 &
FAKE_PID=$!
wait_for 15 "the fake platform APIs" test -s "$WORK/fake_ports.json"
kill -0 "$FAKE_PID" 2>/dev/null || fail "fake_platforms.py exited at start-up"
fake_port() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$WORK/fake_ports.json" "$1"; }
TG_API="http://127.0.0.1:$(fake_port telegram)"
FS_API="http://127.0.0.1:$(fake_port feishu)"

cat >"$WORK/switchboard.toml" <<EOF
# Written by scripts/test_observability.sh.
[server]
listen = "127.0.0.1:0"
shutdown_grace_secs = 2

[api]
allow_anonymous = true

[limits]
user_per_minute = 0

[model]
path = "$ROOT/models/tiny"

[inference]
# A tiny queue, so that a burst of requests is refused as busy.
max_queue = 2
max_batch = 2
max_new_tokens = 16

[storage]
path = "$WORK/switchboard.db"
node_id = "observability"

[inbox]
# Two attempts, quickly: !fault:worker-panic-always is retried once, then dead-lettered.
max_attempts = 2
retry_backoff_ms = 50

[supervision]
# The traffic crashes inference workers on purpose several times within a minute; the
# supervisors must not give up (the check below fails on any escalation).
max_restarts = 50
restart_window_secs = 60
backoff_initial_ms = 10
backoff_max_ms = 200

[[admin.tokens]]
name = "observability"
role = "viewer"
token_sha256 = "$ADMIN_TOKEN_SHA256"

[log]
format = "text"
level = "info"

[testing]
fault_injection = true

# A Telegram bot receiving webhooks (no webhook_url: setWebhook is not called) and a Feishu app
# with plain events (no encrypt_key: no encryption, no signature), both talking to the fakes.
[[telegram]]
account = "obs-tg"
token = "$TG_TOKEN"
mode = "webhook"
secret_token = "$TG_SECRET"
api_base = "$TG_API"

[[feishu]]
account = "obs-fs"
allow_unsigned = true
app_id = "$FS_APP_ID"
app_secret = "$FS_APP_SECRET"
verification_token = "$FS_VERIFICATION_TOKEN"
api_base = "$FS_API"
EOF

log "starting the daemon"
NO_COLOR=1 "$BIN" run --config "$WORK/switchboard.toml" >"$WORK/daemon.log" 2>&1 &
DAEMON_PID=$!

daemon_port() {
    sed 's/\x1b\[[0-9;]*m//g' "$WORK/daemon.log" | grep -m1 -o 'Switchboard is listening.*addr=127\.0\.0\.1:[0-9]*' | grep -o '[0-9]*$'
}
deadline=$(($(date +%s) + 90))
until DPORT=$(daemon_port); do
    kill -0 "$DAEMON_PID" 2>/dev/null || fail "the daemon exited during start-up"
    [ "$(date +%s)" -lt "$deadline" ] || fail "the daemon did not log its address within 90s"
    sleep 0.5
done
BASE="http://127.0.0.1:$DPORT"
wait_for 60 "the daemon to be ready" curl -fsS --max-time 2 "$BASE/readyz"
log "daemon ready at $BASE (pid $DAEMON_PID)"

# ---------------------------------------------------------------------------------------------
# 4. Prometheus

cat >"$WORK/prometheus.yml" <<EOF
# Written by scripts/test_observability.sh.
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
$(for f in "${RULE_FILES[@]}"; do echo "  - \"$f\""; done)
scrape_configs:
  - job_name: switchboard
    static_configs:
      - targets: ["127.0.0.1:$DPORT"]
EOF
promtool check config "$WORK/prometheus.yml" >/dev/null || fail "promtool check config"

for attempt in 1 2 3; do
    PPORT=$(free_port)
    PROM_URL="http://127.0.0.1:$PPORT"
    prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb-$attempt" \
        --storage.tsdb.retention.time=1h --web.listen-address="127.0.0.1:$PPORT" \
        --log.level=warn >"$WORK/prometheus.log" 2>&1 &
    PROM_PID=$!
    deadline=$(($(date +%s) + 45))
    while kill -0 "$PROM_PID" 2>/dev/null && ! curl -fsS --max-time 2 "$PROM_URL/-/ready" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "Prometheus was not ready within 45s"
        sleep 0.5
    done
    kill -0 "$PROM_PID" 2>/dev/null && break
    wait "$PROM_PID" 2>/dev/null || true
    PROM_PID=
    log "Prometheus exited at start-up (port $PPORT taken?); retrying"
done
[ -n "$PROM_PID" ] || fail "Prometheus would not start"
log "Prometheus ready at $PROM_URL (pid $PROM_PID)"
wait_for 30 "Prometheus to scrape the daemon" prom_has 'up{job="switchboard"} == 1'

# ---------------------------------------------------------------------------------------------
# 5. Traffic

# chat BODY [EXPECTED_STATUS]: posts one chat and checks the status code.
chat() {
    local code
    code=$(curl -sS --max-time 60 -o "$WORK/reply" -w '%{http_code}' -X POST \
        -H 'content-type: application/json' --data "$1" "$BASE/api/v1/chat") || fail "chat request failed: $1"
    if [ -n "${2:-}" ] && [ "$code" != "$2" ]; then
        fail "chat $1 answered $code, expected $2: $(head -c 300 "$WORK/reply")"
    fi
    echo "$code"
}
status_of() { # METHOD PATH [BODY]
    curl -sS --max-time 30 -o /dev/null -w '%{http_code}' -X "$1" ${3:+--data "$3"} "$BASE$2"
}
admin_status() { # METHOD PATH [TOKEN]: the admin API's status code (body in $WORK/admin)
    curl -sS --max-time 30 -o "$WORK/admin" -w '%{http_code}' -X "$1" ${3:+-H "authorization: Bearer $3"} "$BASE$2"
}
metrics_have() { # REGEX: true if a line of the daemon's /metrics matches
    local text
    text=$(curl -fsS --max-time 5 "$BASE/metrics") || return 1
    grep -q -- "$1" <<<"$text"
}

fake_faults() { # JSON: queues scripted failures for the next sends at the fake platform APIs
    curl -fsS --max-time 5 -X POST --data "$1" "$TG_API/_control/faults" >/dev/null || fail "could not queue the faults $1"
}
fake_calls() { # the calls the fake platform APIs have seen so far
    curl -fsS --max-time 5 "$TG_API/_control/calls" 2>/dev/null || echo "(fake_platforms.py is not answering)"
}
# telegram_update SECRET UPDATE_ID TEXT: posts a private-chat text update to the bot's webhook
# with SECRET in X-Telegram-Bot-Api-Secret-Token; prints the status code.
telegram_update() {
    local body
    body=$(python3 -c 'import json, sys; u = int(sys.argv[1]); print(json.dumps({"update_id": u, "message": {
        "message_id": u * 10, "date": 1700000000, "from": {"id": 7001, "is_bot": False, "first_name": "Obs"},
        "chat": {"id": 7001, "type": "private", "first_name": "Obs"}, "text": sys.argv[2]}}))' "$2" "$3")
    curl -sS --max-time 30 -o "$WORK/webhook" -w '%{http_code}' -X POST -H 'content-type: application/json' \
        -H "X-Telegram-Bot-Api-Secret-Token: $1" --data "$body" "$BASE/webhook/telegram/obs-tg"
}
# feishu_event TOKEN EVENT_ID MESSAGE_ID TEXT: posts a plain im.message.receive_v1 event (schema
# 2.0, a p2p text message) carrying the verification TOKEN; prints the status code.
feishu_event() {
    local body
    body=$(python3 -c 'import json, sys, time; token, event_id, message_id, text, app_id = sys.argv[1:]; print(json.dumps({
        "schema": "2.0",
        "header": {"event_id": event_id, "event_type": "im.message.receive_v1", "create_time": str(int(time.time() * 1000)),
                   "token": token, "app_id": app_id, "tenant_key": "tenant-obs"},
        "event": {"sender": {"sender_id": {"open_id": "ou_obs_user"}, "sender_type": "user"},
                  "message": {"message_id": message_id, "chat_id": "oc_obs_chat", "chat_type": "p2p", "message_type": "text",
                              "content": json.dumps({"text": text}), "mentions": []}}}))' "$1" "$2" "$3" "$4" "$FS_APP_ID")
    curl -sS --max-time 30 -o "$WORK/webhook" -w '%{http_code}' -X POST -H 'content-type: application/json' \
        --data "$body" "$BASE/webhook/feishu/obs-fs"
}
expect_code() { # GOT WANT WHAT
    [ "$1" = "$2" ] || fail "$3 answered $1, expected $2: $(head -c 300 "$WORK/webhook")"
}
# metric_at_least SERIES N: true if /metrics has the series (name{labels} exactly, in the
# daemon's label order) with a value of at least N.
metric_at_least() {
    local text
    text=$(curl -fsS --max-time 5 "$BASE/metrics") || return 1
    awk -v s="$1 " -v n="$2" 'index($0, s) == 1 && $NF + 0 >= n { found = 1 } END { exit !found }' <<<"$text"
}
wait_metric() { # SERIES N WHAT
    local deadline=$(($(date +%s) + 45))
    until metric_at_least "$1" "$2"; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "timed out waiting for $3 ($1 >= $2); the fake APIs saw $(fake_calls)"
        sleep 0.3
    done
}

# platform_traffic PASS: Telegram webhook updates and Feishu events, and the sends they cause.
# Each pass: an update / event with the right secret or verification token (answered), the same
# again (a re-delivery: outcome duplicate), and one with a wrong secret / token (401: bad_secret,
# bad_token). Pass 1: the fake answers the first sendMessage with 429 (retry_after 1), so the
# reply is rate-limited, then sent. Pass 2: a 502 (transient, retried) then a 403 (permanent:
# the reply is dropped) for Telegram; a 429 then a revoked token (the daemon fetches a new one
# and retries: a token refresh) for Feishu.
platform_traffic() {
    local p=$1 code
    local up='switchboard_platform_updates_total{platform="telegram",account="obs-tg",kind="message",outcome='
    local fu='switchboard_platform_updates_total{platform="feishu",account="obs-fs",kind="message",outcome='
    local ts='switchboard_egress_sends_total{platform="telegram",account="obs-tg",outcome='
    local fs='switchboard_egress_sends_total{platform="feishu",account="obs-fs",outcome='
    [ "$p" = 1 ] || fake_faults '{"telegram": ["502", "403"], "feishu": ["429", "token_invalid"]}'

    code=$(telegram_update "$TG_SECRET" $((1000 * p + 1)) "hello from telegram, pass $p")
    expect_code "$code" 200 "a Telegram update with the right secret"
    code=$(telegram_update "$TG_SECRET" $((1000 * p + 1)) "hello from telegram, pass $p")
    expect_code "$code" 200 "a re-delivered Telegram update"
    code=$(telegram_update "wrong-$TG_SECRET" $((1000 * p + 2)) "forged")
    expect_code "$code" 401 "a Telegram update with a wrong secret"
    code=$(feishu_event "$FS_VERIFICATION_TOKEN" "ev_obs_$p" "om_obs_$p" "hello from feishu, pass $p")
    expect_code "$code" 200 "a Feishu event"
    code=$(feishu_event "$FS_VERIFICATION_TOKEN" "ev_obs_$p" "om_obs_$p" "hello from feishu, pass $p")
    expect_code "$code" 200 "a re-delivered Feishu event"
    code=$(feishu_event "wrong-$FS_VERIFICATION_TOKEN" "ev_obs_bad_$p" "om_obs_bad_$p" "forged")
    expect_code "$code" 401 "a Feishu event with a wrong verification token"

    wait_metric "$up\"handled\"}" "$p" "the Telegram update to be handled"
    wait_metric "$up\"duplicate\"}" "$p" "the re-delivered Telegram update to count as a duplicate"
    wait_metric "$fu\"handled\"}" "$p" "the Feishu event to be handled"
    wait_metric "$fu\"duplicate\"}" "$p" "the re-delivered Feishu event to count as a duplicate"
    wait_metric 'switchboard_platform_rejected_total{platform="telegram",account="obs-tg",reason="bad_secret"}' "$p" \
        "the wrong Telegram secret to be counted"
    wait_metric 'switchboard_platform_rejected_total{platform="feishu",account="obs-fs",reason="bad_token"}' "$p" \
        "the wrong Feishu verification token to be counted"
    if [ "$p" = 1 ]; then
        wait_metric "$ts\"rate_limited\"}" 1 "the Telegram 429 to be counted"
        wait_metric 'switchboard_egress_rate_limited_total{platform="telegram",account="obs-tg"}' 1 "the Telegram 429 to be counted"
        wait_metric "$ts\"ok\"}" 1 "the Telegram reply to be sent after the 429"
        wait_metric "$fs\"ok\"}" 1 "the Feishu reply to be sent"
        wait_metric 'switchboard_feishu_token_refreshes_total{account="obs-fs"}' 1 "the Feishu token fetch to be counted"
    else
        wait_metric "$ts\"transient_error\"}" 1 "the Telegram 502 to be counted"
        wait_metric "$ts\"permanent_error\"}" 1 "the Telegram 403 to be counted"
        wait_metric 'switchboard_egress_rate_limited_total{platform="feishu",account="obs-fs"}' 1 "the Feishu 429 to be counted"
        wait_metric "$fs\"ok\"}" 2 "the Feishu reply to be sent after the 429 and the token refresh"
        wait_metric 'switchboard_feishu_token_refreshes_total{account="obs-fs"}' 2 "the Feishu token refresh to be counted"
    fi
    wait_metric 'switchboard_messages_answered_total{platform="telegram",outcome="ok"}' "$p" "the Telegram message to be answered"
    wait_metric 'switchboard_messages_answered_total{platform="feishu",outcome="ok"}' "$p" "the Feishu message to be answered"
}

# traffic PASS: one pass of the whole mix. Histograms (and counters with labels the daemon does
# not know in advance, such as HTTP routes and statuses) appear in /metrics only when first
# touched, so Prometheus's first sample of such a series already holds the first pass; the
# second pass, a few scrapes later, is what makes rate() and histogram_quantile() non-trivial.
traffic() {
    local p=$1 code round i pid burst
    platform_traffic "$p"
    chat "{\"conversation\":\"obs-1\",\"user\":\"u1\",\"text\":\"hello there, pass $p\"}" 200 >/dev/null
    chat "{\"conversation\":\"obs-2\",\"user\":\"u2\",\"text\":\"what can you do?\"}" 200 >/dev/null
    chat "{\"conversation\":\"obs-1\",\"user\":\"u1\",\"text\":\"and once more\"}" 200 >/dev/null
    chat "{\"conversation\":\"obs-3-$p\",\"user\":\"u3\",\"text\":\"a new conversation\"}" 200 >/dev/null

    curl -sS -N --max-time 60 -X POST -H 'content-type: application/json' \
        --data "{\"conversation\":\"obs-stream\",\"user\":\"u4\",\"text\":\"stream this\",\"stream\":true}" \
        "$BASE/api/v1/chat" >"$WORK/stream" || fail "streaming chat failed"
    grep -q '^event: *done' "$WORK/stream" || fail "streaming chat had no done event: $(head -c 300 "$WORK/stream")"

    code=$(status_of GET /no-such-route)
    [ "$code" = 404 ] || fail "GET /no-such-route answered $code, expected 404"
    code=$(status_of POST /api/v1/chat '{not json')
    [ "$code" = 400 ] || fail "a malformed chat answered $code, expected 400"
    status_of GET /healthz >/dev/null

    # An inference worker crashes once; it is restarted and the request is retried.
    chat '{"conversation":"obs-fault","user":"u5","text":"!fault:worker-panic"}' 200 >/dev/null
    metrics_have '^switchboard_actor_restarts_total{' || fail "no actor restart was counted after !fault:worker-panic"
    # A session actor crashes: that message fails (outcome failed).
    chat '{"conversation":"obs-session-fault","user":"u6","text":"!fault:session-panic"}' >/dev/null

    # A duplicate message_id: the second copy is refused (409) and counted as a duplicate.
    chat "{\"conversation\":\"obs-dup\",\"user\":\"u7\",\"text\":\"only once\",\"message_id\":\"obs-dup-$p\"}" 200 >/dev/null
    chat "{\"conversation\":\"obs-dup\",\"user\":\"u7\",\"text\":\"only once\",\"message_id\":\"obs-dup-$p\"}" 409 >/dev/null

    # Once: a message whose inference worker crashes on every attempt. It is retried
    # (inbox.max_attempts = 2), then moved to the dead-letter queue and answered with the
    # apology (503 dead_lettered, outcome apology).
    if [ "$p" = 1 ]; then
        chat '{"conversation":"obs-dead-letter","user":"u8","text":"!fault:worker-panic-always"}' 503 >/dev/null
        grep -q '"dead_lettered"' "$WORK/reply" || fail "!fault:worker-panic-always was not dead-lettered: $(head -c 300 "$WORK/reply")"
        metrics_have '^switchboard_messages_answered_total{[^}]*outcome="apology"[^}]*} [1-9]' ||
            fail "no apology answer was counted after the dead letter"
        metrics_have '^switchboard_inbox_retries_total [1-9]' || fail "no inbox retry was counted before the dead letter"
        wait_for 30 "the dead-letter gauge" metrics_have '^switchboard_dead_letters [1-9]'
    fi

    # Admin API: no token and a wrong token (unauthorized), the viewer token on an operator
    # route (forbidden), and the viewer token listing the dead letters (ok).
    code=$(admin_status GET /admin/v1/dead-letters)
    [ "$code" = 401 ] || fail "the admin API without a token answered $code, expected 401"
    code=$(admin_status GET /admin/v1/dead-letters "wrong-$ADMIN_TOKEN")
    [ "$code" = 401 ] || fail "the admin API with a wrong token answered $code, expected 401"
    code=$(admin_status POST /admin/v1/dead-letters/1/replay "$ADMIN_TOKEN")
    [ "$code" = 403 ] || fail "a viewer replaying a dead letter got $code, expected 403"
    code=$(admin_status GET /admin/v1/dead-letters "$ADMIN_TOKEN")
    [ "$code" = 200 ] || fail "the admin API with the viewer token answered $code, expected 200: $(head -c 300 "$WORK/admin")"
    grep -q 'worker-panic-always' "$WORK/admin" || fail "the dead letter is not listed by the admin API: $(head -c 300 "$WORK/admin")"
    for outcome in ok unauthorized forbidden; do
        metrics_have "^switchboard_admin_requests_total{outcome=\"$outcome\"} [1-9]" ||
            fail "no admin request with outcome $outcome was counted"
    done
    metrics_have '^switchboard_inbox_duplicates_total{platform="http"} [1-9]' || fail "no duplicate was counted after a 409"

    # A burst larger than inference.max_queue: some requests are refused as busy (503).
    for round in 1 2 3; do
        burst=()
        for i in $(seq 1 24); do
            curl -sS --max-time 60 -o /dev/null -X POST -H 'content-type: application/json' \
                --data "{\"conversation\":\"obs-burst-$p-$round-$i\",\"user\":\"u\",\"text\":\"burst $i\"}" \
                "$BASE/api/v1/chat" &
            burst+=($!)
        done
        for pid in "${burst[@]}"; do
            wait "$pid" || fail "a burst request failed (curl exit $?)"
        done
        metrics_have '^switchboard_inference_rejected_total{reason="busy"}' && break
        [ "$round" -lt 3 ] || fail "three bursts of 24 concurrent chats caused no busy rejection"
    done
    chat '{"conversation":"obs-1","user":"u1","text":"after the burst"}' 200 >/dev/null
    kill -0 "$DAEMON_PID" 2>/dev/null || fail "the daemon died during the traffic"
    if metrics_have '^switchboard_supervisor_escalations_total{[^}]*} [1-9]'; then
        fail "a supervisor escalated during the traffic: $(curl -fsS --max-time 5 "$BASE/metrics" | grep '^switchboard_supervisor_escalations_total')"
    fi
}

log "driving traffic (first pass)"
traffic 1
wait_for 30 "Prometheus to see the first pass" prom_has 'switchboard_inference_rejected_total{reason="busy"}'
sleep 2
log "driving traffic (second pass)"
traffic 2
log "traffic done"
# Let Prometheus scrape the final counters several times (1s interval).
sleep 5

# ---------------------------------------------------------------------------------------------
# 6. The check, and a check that the check can fail

log "checking every dashboard and alert expression"
timeout 180 python3 "$ROOT/scripts/check_observability.py" --prometheus "$PROM_URL" \
    --metrics-url "$BASE/metrics" --dashboards "${DASHBOARDS[@]}" --rules "${RULE_FILES[@]}" \
    ${OBS_VERBOSE:+--verbose} ||
    fail "check_observability.py found problems (listed above)"

# negative PLANTED DASHBOARD OLD_METRIC: the check must fail on a copy of DASHBOARD with
# OLD_METRIC misspelt as PLANTED, naming PLANTED.
negative() {
    local planted=$1 dash=$2 metric=$3 rc
    mkdir -p "$WORK/bad"
    sed "s/$metric/$planted/g" "$ROOT/grafana/dashboards/$dash" >"$WORK/bad/$dash"
    grep -q "$planted" "$WORK/bad/$dash" || fail "negative test: could not plant $planted in $dash"
    set +e
    timeout 180 python3 "$ROOT/scripts/check_observability.py" --prometheus "$PROM_URL" \
        --metrics-url "$BASE/metrics" --dashboards "$WORK/bad/$dash" \
        --rules "${RULE_FILES[@]}" >"$WORK/negative.log" 2>&1
    rc=$?
    set -e
    if [ "$rc" -ne 1 ] || ! grep -q "$planted" "$WORK/negative.log"; then
        cat "$WORK/negative.log" >&2
        fail "negative test: the check did not fail (exit $rc) on $planted in $dash"
    fi
    log "negative test ok: the check rejected $planted in $dash"
}
log "negative tests: a dashboard with a misspelt metric must fail the check"
negative switchboard_inference_queue_dpeth switchboard-inference.json switchboard_inference_queue_depth
negative switchboard_inbox_dpeth switchboard-overview.json switchboard_inbox_depth
negative switchboard_egress_sneds_total switchboard-platforms.json switchboard_egress_sends_total
