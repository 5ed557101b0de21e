#!/usr/bin/env python3
"""Fake Telegram Bot API and Feishu Open API servers for scripts/test_observability.sh.

Standard library only. Starts two HTTP servers on free loopback ports and writes
`{"telegram": PORT, "feishu": PORT}` to --port-file once both listen; runs until SIGTERM/SIGINT.
Point the daemon's `[[telegram]] api_base` at http://127.0.0.1:TELEGRAM_PORT and
`[[feishu]] api_base` at http://127.0.0.1:FEISHU_PORT.

Telegram (`POST /bot<token>/<method>`, JSON body, `{"ok": true, "result": ...}` envelopes):
getMe, sendMessage, sendChatAction, editMessageText, setWebhook, deleteWebhook, getUpdates
(answers an empty list at once). A wrong token in the path answers 401.

Feishu: `POST /open-apis/auth/v3/tenant_access_token/internal` (checks app_id/app_secret, issues
t-1, t-2, ... valid for 7200 s), `GET /open-apis/bot/v3/info`, and
`POST /open-apis/im/v1/messages/{id}/reply` (both need a valid `Authorization: Bearer` token,
else code 99991663, "invalid access token").

Scripted faults, each used by one send call, in order:
  telegram sendMessage: "429" (retry_after 1), "502", "403" (bot blocked by the user);
  feishu reply: "429" (code 99991400), "500", "token_invalid" (revokes the token the call used:
  the daemon must fetch a new one and retry).
The Telegram queue starts with --telegram-faults (default: one "429", so the first reply is
rate-limited); more are queued with `POST /_control/faults` on either port, body
`{"telegram": ["502"], "feishu": ["token_invalid"]}`. `GET /_control/calls` on either port
answers the calls seen so far, by platform and method, and the faults still queued.
"""

import argparse
import json
import os
import re
import signal
import sys
import threading
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
STATE = {
    "calls": Counter(),  # "telegram sendMessage" -> n
    "faults": {"telegram": deque(), "feishu": deque()},
    "tg_next_message_id": 5000,
    "fs_tokens_issued": 0,
    "fs_valid": set(),
    "fs_next_reply": 0,
}
TELEGRAM_FAULTS = {"429", "502", "403"}
FEISHU_FAULTS = {"429", "500", "token_invalid"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    platform = "?"
    config = None

    def log_message(self, fmt, *args):  # quiet unless --verbose
        if self.config.verbose:
            sys.stderr.write(f"[fake {self.platform}] {fmt % args}\n")

    def reply(self, status, body, headers=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            v = json.loads(raw or b"{}")
            return v if isinstance(v, dict) else {}
        except ValueError:
            return {}

    def control(self, method):
        if method == "GET" and self.path == "/_control/calls":
            with LOCK:
                return self.reply(200, {
                    "calls": dict(STATE["calls"]),
                    "faults": {k: list(v) for k, v in STATE["faults"].items()},
                    "feishu_tokens_issued": STATE["fs_tokens_issued"],
                })
        if method == "POST" and self.path == "/_control/faults":
            b = self.body()
            for platform, allowed in (("telegram", TELEGRAM_FAULTS), ("feishu", FEISHU_FAULTS)):
                for f in b.get(platform) or []:
                    if f not in allowed:
                        return self.reply(400, {"error": f"unknown {platform} fault {f!r}"})
            with LOCK:
                for platform in ("telegram", "feishu"):
                    STATE["faults"][platform].extend(b.get(platform) or [])
            return self.reply(200, {"ok": True})
        return self.reply(404, {"error": "no such control endpoint"})

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def dispatch(self, method):
        try:
            if self.path.startswith("/_control/"):
                return self.control(method)
            if self.platform == "telegram":
                return self.telegram(method)
            return self.feishu(method)
        except (BrokenPipeError, ConnectionResetError):
            pass

    # ---------------------------------------------------------------------------------------
    # Telegram Bot API

    def telegram(self, method):
        def err(status, description, parameters=None):
            body = {"ok": False, "error_code": status, "description": description}
            if parameters:
                body["parameters"] = parameters
            return self.reply(status, body)

        m = re.fullmatch(r"/bot([^/]+)/(\w+)", self.path.split("?", 1)[0])
        if method != "POST" or not m:
            return err(404, "Not Found")
        token, api = m.groups()
        body = self.body()
        if token != self.config.telegram_token:
            return err(401, "Unauthorized")
        with LOCK:
            STATE["calls"][f"telegram {api}"] += 1
        if api == "getMe":
            return self.reply(200, {"ok": True, "result": {
                "id": 999, "is_bot": True, "first_name": "Switchboard", "username": "sb_obs_bot"}})
        if api in ("setWebhook", "deleteWebhook", "sendChatAction", "editMessageText"):
            return self.reply(200, {"ok": True, "result": True})
        if api == "getUpdates":
            return self.reply(200, {"ok": True, "result": []})
        if api == "sendMessage":
            with LOCK:
                fault = STATE["faults"]["telegram"].popleft() if STATE["faults"]["telegram"] else None
                if fault:
                    STATE["calls"][f"telegram sendMessage {fault}"] += 1
                STATE["tg_next_message_id"] += 1
                mid = STATE["tg_next_message_id"]
            if fault == "429":
                return err(429, "Too Many Requests: retry after 1", {"retry_after": 1})
            if fault == "502":
                return err(502, "Bad Gateway")
            if fault == "403":
                return err(403, "Forbidden: bot was blocked by the user")
            return self.reply(200, {"ok": True, "result": {
                "message_id": mid, "date": 1700000000,
                "chat": {"id": body.get("chat_id"), "type": "private"}, "text": body.get("text", "")}})
        return err(404, "Not Found: method not found")

    # ---------------------------------------------------------------------------------------
    # Feishu Open API

    def feishu(self, method):
        path = self.path.split("?", 1)[0]
        invalid = {"code": 99991663, "msg": "Invalid access token for authorization."}

        def bearer():
            auth = self.headers.get("Authorization") or ""
            return auth[len("Bearer "):] if auth.startswith("Bearer ") else ""

        if method == "POST" and path == "/open-apis/auth/v3/tenant_access_token/internal":
            body = self.body()
            with LOCK:
                STATE["calls"]["feishu tenant_access_token"] += 1
            if body.get("app_id") != self.config.feishu_app_id or body.get("app_secret") != self.config.feishu_app_secret:
                return self.reply(400, {"code": 10014, "msg": "app secret invalid"})
            with LOCK:
                STATE["fs_tokens_issued"] += 1
                token = f"t-{STATE['fs_tokens_issued']}"
                STATE["fs_valid"].add(token)
            return self.reply(200, {"code": 0, "msg": "ok", "tenant_access_token": token, "expire": 7200})
        if method == "GET" and path == "/open-apis/bot/v3/info":
            with LOCK:
                STATE["calls"]["feishu bot_info"] += 1
                ok = bearer() in STATE["fs_valid"]
            if not ok:
                return self.reply(400, invalid)
            return self.reply(200, {"code": 0, "msg": "ok", "bot": {"open_id": "ou_bot_obs", "app_name": "Switchboard"}})
        m = re.fullmatch(r"/open-apis/im/v1/messages/([\w-]+)/reply", path)
        if method == "POST" and m:
            self.body()
            token = bearer()
            with LOCK:
                STATE["calls"]["feishu reply"] += 1
                if token not in STATE["fs_valid"]:
                    return self.reply(400, invalid)
                fault = STATE["faults"]["feishu"].popleft() if STATE["faults"]["feishu"] else None
                if fault:
                    STATE["calls"][f"feishu reply {fault}"] += 1
                if fault == "token_invalid":
                    STATE["fs_valid"].discard(token)
                STATE["fs_next_reply"] += 1
                n = STATE["fs_next_reply"]
            if fault == "429":
                return self.reply(429, {"code": 99991400, "msg": "request trigger frequency limit"})
            if fault == "500":
                return self.reply(500, {"code": 1, "msg": "internal error"})
            if fault == "token_invalid":
                return self.reply(400, invalid)
            return self.reply(200, {"code": 0, "msg": "success", "data": {"message_id": f"om_reply_{n}"}})
        return self.reply(404, {"code": 404, "msg": "not found"})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port-file", required=True, help='where to write {"telegram": PORT, "feishu": PORT}')
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--telegram-token", default="123456:OBS-token_abc")
    ap.add_argument("--telegram-faults", default="429", help="comma-separated faults for the first sendMessage calls")
    ap.add_argument("--feishu-app-id", default="cli_obs_app")
    ap.add_argument("--feishu-app-secret", default="obs-app-secret")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every request to stderr")
    args = ap.parse_args()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())

    for f in filter(None, args.telegram_faults.split(",")):
        if f not in TELEGRAM_FAULTS:
            ap.error(f"unknown telegram fault {f!r}")
        STATE["faults"]["telegram"].append(f)

    servers = {}
    for platform in ("telegram", "feishu"):
        handler = type(f"{platform.title()}Handler", (Handler,), {"platform": platform, "config": args})
        srv = ThreadingHTTPServer((args.host, 0), handler)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, name=platform, daemon=True).start()
        servers[platform] = srv

    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump({p: s.server_address[1] for p, s in servers.items()}, f)
    os.replace(tmp, args.port_file)

    while not done.wait(1):
        pass
    for s in servers.values():
        s.shutdown()
        s.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
