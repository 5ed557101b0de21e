#!/usr/bin/env python3
"""Checks Switchboard's Grafana dashboards and Prometheus alert rules against a live daemon.

Run by scripts/test_observability.sh once Prometheus has scraped a daemon that has seen
traffic. Standard library only. For every PromQL expression in the dashboards (panel
targets and `label_values()` template variables) and in the alert rules, it:

  * evaluates it through Prometheus's HTTP API (`/api/v1/query`) and fails if it is invalid
    or returns nothing. Grafana variables are substituted first ($__rate_interval -> 1m,
    $__range -> 5m, every dashboard variable such as $platform or $instance -> `.*`).
    Alert expressions are threshold comparisons that are normally empty, so each operand
    of their top-level `and`/`or`/`unless` and comparison operators is evaluated on its own
    (operands without a metric, like `0.95`, are skipped), and the full expression only has
    to be valid;
  * extracts every metric name it references and fails if the name is not in the daemon's
    own /metrics output (so renaming a metric fails the check).

It also checks the rules Prometheus loaded (all of them, healthy, `for: 5m`, `summary` and
`runbook` annotations) and the dashboards' structure (datasource variable, unique panel ids).

Exit status: 0 when all is well, 1 when any check failed (offenders listed), 2 on usage or
connection errors.
"""

import argparse
import glob
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

# --------------------------------------------------------------------------------------------
# PromQL lexing: just enough to split top-level operators and find metric names.

KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan", "atan2",
}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
COMPARISONS = {"==", "!=", ">=", "<=", ">", "<"}
SET_OPS_LOW = {"or"}
SET_OPS_HIGH = {"and", "unless"}

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+(?![\w.]))
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>=(),@])
    """,
    re.VERBOSE,
)


class Token:
    __slots__ = ("kind", "text", "start", "end")

    def __init__(self, kind, text, start, end):
        self.kind, self.text, self.start, self.end = kind, text, start, end

    def __repr__(self):
        return f"{self.kind}:{self.text}"


def _scan_group(expr, i, close):
    """Returns the index just past the `close` matching the opener at expr[i] (quotes aware)."""
    j = i + 1
    while j < len(expr):
        c = expr[j]
        if c in "\"'`":
            q = c
            j += 1
            while j < len(expr) and expr[j] != q:
                j += 2 if expr[j] == "\\" and q != "`" else 1
        elif c == close:
            return j + 1
        j += 1
    raise ValueError(f"unclosed {expr[i]!r} at offset {i}")


def tokenize(expr):
    tokens, i = [], 0
    while i < len(expr):
        c = expr[i]
        if c in "{[":
            j = _scan_group(expr, i, "}" if c == "{" else "]")
            tokens.append(Token("braces" if c == "{" else "range", expr[i:j], i, j))
            i = j
            continue
        m = _TOKEN_RE.match(expr, i)
        if not m:
            raise ValueError(f"cannot lex {expr[i:i + 20]!r} at offset {i}")
        kind = m.lastgroup
        if kind not in ("ws", "comment"):
            tokens.append(Token(kind, m.group(), i, m.end()))
        i = m.end()
    return tokens


def metric_names(expr):
    """Metric names referenced by an expression (selectors, not functions or label names)."""
    toks = tokenize(expr)
    names = set()
    skip_group = False
    depth_skip = None
    depth = 0
    for k, t in enumerate(toks):
        if t.kind == "op" and t.text == "(":
            depth += 1
            if skip_group and depth_skip is None:
                depth_skip = depth
            continue
        if t.kind == "op" and t.text == ")":
            if depth_skip == depth:
                depth_skip = None
                skip_group = False
            depth -= 1
            continue
        if depth_skip is not None:
            continue  # label names inside by (...), on (...), group_left (...)
        if t.kind == "ident":
            low = t.text.lower()
            nxt = toks[k + 1] if k + 1 < len(toks) else None
            if low in GROUPING:
                skip_group = nxt is not None and nxt.kind == "op" and nxt.text == "("
                continue
            if low in KEYWORDS:
                continue
            if nxt is not None and nxt.kind == "op" and nxt.text == "(":
                continue  # function or aggregation
            if nxt is not None and nxt.kind == "ident" and nxt.text.lower() in ("by", "without"):
                continue  # aggregation with a leading grouping: sum by (le) (...)
            names.add(t.text)
        elif t.kind == "braces":
            m = re.search(r"""__name__\s*=\s*["']([a-zA-Z_:][a-zA-Z0-9_:]*)["']""", t.text)
            if m:
                names.add(m.group(1))
    return names


def _strip_outer_parens(toks, expr):
    while toks and toks[0].text == "(" and toks[-1].text == ")":
        depth = 0
        for k, t in enumerate(toks):
            if t.kind == "op" and t.text == "(":
                depth += 1
            elif t.kind == "op" and t.text == ")":
                depth -= 1
                if depth == 0 and k != len(toks) - 1:
                    return toks
        toks = toks[1:-1]
    return toks


def _strip_modifiers(toks):
    """Drops `bool`, `on (...)`, `ignoring (...)`, `group_left (...)` at an operand's start."""
    while toks and toks[0].kind == "ident" and toks[0].text.lower() in ("bool", "on", "ignoring", "group_left", "group_right"):
        kw = toks[0].text.lower()
        toks = toks[1:]
        if kw != "bool" and toks and toks[0].text == "(":
            depth = 0
            for k, t in enumerate(toks):
                if t.text == "(":
                    depth += 1
                elif t.text == ")":
                    depth -= 1
                    if depth == 0:
                        toks = toks[k + 1:]
                        break
    return toks


def _split_top(toks, ops):
    parts, cur, depth = [], [], 0
    for t in toks:
        if t.kind == "op" and t.text == "(":
            depth += 1
        elif t.kind == "op" and t.text == ")":
            depth -= 1
        is_op = depth == 0 and ((t.kind == "op" and t.text in ops) or (t.kind == "ident" and t.text.lower() in ops))
        if is_op:
            parts.append(cur)
            cur = []
        else:
            cur.append(t)
    parts.append(cur)
    return parts


def operands(expr):
    """Splits an expression at its top-level set and comparison operators, recursively.

    Returns the source text of each leaf operand (the parts that are not such operators)."""

    def rec(toks):
        toks = _strip_outer_parens(_strip_modifiers(toks), expr)
        if not toks:
            return []
        for ops in (SET_OPS_LOW, SET_OPS_HIGH, COMPARISONS):
            parts = _split_top(toks, ops)
            if len(parts) > 1:
                out = []
                for p in parts:
                    out.extend(rec(p))
                return out
        return [expr[toks[0].start:toks[-1].end]]

    return rec(tokenize(expr))


# --------------------------------------------------------------------------------------------
# Grafana variables

GRAFANA_BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
    "__auto": "1m",
}


def substitute(expr, user_vars=None):
    """Replaces Grafana variables: built-ins by durations, every other one by `.*`."""

    def value(name):
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        if user_vars is not None and name not in user_vars:
            raise KeyError(name)
        return ".*"

    unknown = []

    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        try:
            return value(name)
        except KeyError:
            unknown.append(name)
            return ".*"

    out = re.sub(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)", repl, expr)
    return out, unknown


# --------------------------------------------------------------------------------------------
# Prometheus and daemon access


class Prom:
    def __init__(self, url, timeout):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def get(self, path, params=None):
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=self.timeout) as r:
            return json.load(r)

    def query(self, q):
        """Returns (result_type, result, error)."""
        data = urllib.parse.urlencode({"query": q}).encode()
        req = urllib.request.Request(self.url + "/api/v1/query", data=data,
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            try:
                body = json.load(e)
            except Exception:  # noqa: BLE001
                return None, None, f"HTTP {e.code}"
        if body.get("status") != "success":
            return None, None, f"{body.get('errorType')}: {body.get('error')}"
        return body["data"]["resultType"], body["data"]["result"], None


def scraped_names(metrics_url, timeout):
    with urllib.request.urlopen(metrics_url, timeout=timeout) as r:
        text = r.read().decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 3:
                names.add(parts[2])
        elif line and not line.startswith("#"):
            m = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
            if m:
                names.add(m.group())
    return names


# --------------------------------------------------------------------------------------------
# Collecting expressions


class Expr:
    def __init__(self, where, raw, kind):
        self.where, self.raw, self.kind = where, raw, kind  # kind: panel | variable | alert | record


def walk_panels(panels):
    for p in panels or []:
        yield p
        yield from walk_panels(p.get("panels"))


def dashboard_exprs(path, problems):
    with open(path) as f:
        try:
            dash = json.load(f)
        except json.JSONDecodeError as e:
            problems.append(f"{path}: invalid JSON: {e}")
            return []
    name = os.path.basename(path)
    out = []
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds_vars = [n for n, v in variables.items() if v.get("type") == "datasource" and v.get("query") == "prometheus"]
    if "datasource" not in ds_vars:
        problems.append(f"{name}: no `datasource` template variable of type datasource/prometheus")
    for required in ("instance",):
        if required not in variables:
            problems.append(f"{name}: no `{required}` template variable")
    if not dash.get("uid"):
        problems.append(f"{name}: no uid")
    for vname, v in variables.items():
        if v.get("type") != "query":
            continue
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", q or "", re.S)
        if not m:
            problems.append(f"{name}: variable ${vname}: query {q!r} is not label_values(selector, label)")
            continue
        out.append(Expr(f"{name} variable ${vname}", f"count by ({m.group(2)}) ({m.group(1)})", "variable"))
    seen_ids = {}
    for p in walk_panels(dash.get("panels")):
        pid = p.get("id")
        title = p.get("title", "?")
        if pid in seen_ids:
            problems.append(f"{name}: panel id {pid} used by {seen_ids[pid]!r} and {title!r}")
        seen_ids[pid] = title
        if p.get("type") == "row":
            continue
        if "gridPos" not in p:
            problems.append(f"{name}: panel {title!r} has no gridPos")
        targets = p.get("targets") or []
        if not targets and p.get("type") != "text":
            problems.append(f"{name}: panel {title!r} has no targets")
        for t in targets:
            ds = t.get("datasource") or p.get("datasource") or {}
            if ds.get("uid") not in ("${datasource}", "$datasource"):
                problems.append(f"{name}: panel {title!r} target {t.get('refId')} does not use ${{datasource}}")
            if not t.get("expr"):
                problems.append(f"{name}: panel {title!r} target {t.get('refId')} has no expr")
                continue
            out.append(Expr(f"{name} panel {title!r} target {t.get('refId')}", t["expr"], "panel"))
    for e in out:
        e.vars = set(variables)
    return out


def count_rules_in_file(path):
    with open(path) as f:
        return len(re.findall(r"^\s*-\s*(?:alert|record)\s*:", f.read(), re.M))


def rule_exprs(prom, rule_files, problems):
    """Rules as Prometheus loaded them (no YAML parser needed), cross-checked with the files."""
    body = prom.get("/api/v1/rules")
    groups = body["data"]["groups"]
    loaded = {}
    out = []
    for g in groups:
        for r in g["rules"]:
            fname = os.path.basename(g.get("file", "?"))
            loaded[fname] = loaded.get(fname, 0) + 1
            name = r.get("name")
            where = f"{fname} {r['type']} {name}"
            if r.get("health") == "err":
                problems.append(f"{where}: unhealthy in Prometheus: {r.get('lastError')}")
            if r["type"] == "alerting":
                if r.get("duration") != 300:
                    problems.append(f"{where}: `for` is {r.get('duration')}s, want 5m")
                ann = r.get("annotations") or {}
                for a in ("summary", "runbook"):
                    if not ann.get(a):
                        problems.append(f"{where}: no `{a}` annotation")
                out.append(Expr(where, r["query"], "alert"))
            else:
                out.append(Expr(where, r["query"], "record"))
    for path in rule_files:
        want = count_rules_in_file(path)
        got = loaded.get(os.path.basename(path), 0)
        if want != got:
            problems.append(f"{path}: {want} rules in the file but Prometheus loaded {got} (is it in rule_files?)")
    return out, groups


# --------------------------------------------------------------------------------------------


def has_samples(rtype, result):
    if rtype in ("vector", "matrix"):
        return len(result) > 0
    return result is not None  # scalar / string


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prometheus", required=True, help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    ap.add_argument("--metrics-url", required=True, help="the daemon's /metrics URL")
    ap.add_argument("--dashboards", nargs="+", default=sorted(glob.glob("grafana/dashboards/*.json")))
    ap.add_argument("--rules", nargs="+", default=sorted(glob.glob("grafana/alerts/*.yml")))
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every expression checked")
    args = ap.parse_args()

    prom = Prom(args.prometheus, args.timeout)
    problems, warnings = [], []
    try:
        scraped = scraped_names(args.metrics_url, args.timeout)
        exprs = []
        for d in args.dashboards:
            exprs.extend(dashboard_exprs(d, problems))
        alerts, _ = rule_exprs(prom, args.rules, problems)
        exprs.extend(alerts)
    except (urllib.error.URLError, OSError) as e:
        print(f"check_observability: cannot reach Prometheus or the daemon: {e}", file=sys.stderr)
        return 2
    if not args.dashboards:
        problems.append("no dashboards found")
    if not any(e.kind == "alert" for e in exprs):
        problems.append("no alert rules loaded")

    synthetic = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped"}
    referenced = {}
    evaluated = 0
    for e in exprs:
        expr, unknown = substitute(e.raw, getattr(e, "vars", None))
        for u in unknown:
            problems.append(f"{e.where}: unknown variable ${u}")
        try:
            names = metric_names(expr)
        except ValueError as err:
            problems.append(f"{e.where}: cannot parse: {err}\n    {expr}")
            continue
        for n in names:
            referenced.setdefault(n, []).append(e.where)
        rtype, result, err = prom.query(expr)
        evaluated += 1
        if err:
            problems.append(f"{e.where}: invalid: {err}\n    {expr}")
            continue
        if e.kind in ("alert",):
            # Normally empty: check each operand of the top-level operators on its own.
            leaves = [p for p in operands(expr) if metric_names(p)]
            if not leaves:
                problems.append(f"{e.where}: no metric in the expression\n    {expr}")
            for leaf in leaves:
                lt, lr, lerr = prom.query(leaf)
                evaluated += 1
                if lerr:
                    problems.append(f"{e.where}: operand invalid: {lerr}\n    {leaf}")
                elif not has_samples(lt, lr):
                    problems.append(f"{e.where}: operand returned no data\n    {leaf}")
                elif args.verbose:
                    print(f"ok    {e.where} operand ({len(lr)} series): {leaf}")
            if has_samples(rtype, result):
                warnings.append(f"{e.where}: currently true for {len(result)} series (fires after `for`)")
        else:
            if not has_samples(rtype, result):
                problems.append(f"{e.where}: returned no data\n    {expr}")
            else:
                if rtype == "vector" and all(s["value"][1] in ("NaN", "+Inf", "-Inf") for s in result):
                    warnings.append(f"{e.where}: only NaN/Inf values (no traffic in the window?)")
                if args.verbose:
                    print(f"ok    {e.where} ({len(result) if isinstance(result, list) else 1} series)")

    missing = sorted(n for n in referenced if n not in scraped and n not in synthetic)
    for n in missing:
        where = "; ".join(sorted(set(referenced[n]))[:3])
        problems.append(f"metric {n!r} is not in the daemon's /metrics output (used by {where})")

    switchboard_scraped = sorted(n for n in scraped if n.startswith("switchboard_") and not re.search(r"_(bucket|sum|count)$", n))
    unused = [n for n in switchboard_scraped
              if not any(r == n or r.startswith(n + "_") for r in referenced)]
    for n in unused:
        warnings.append(f"metric {n} is exported but used by no dashboard or alert")

    for w in warnings:
        print(f"note: {w}")
    print(f"check_observability: {len(exprs)} expressions ({evaluated} queries), "
          f"{len(referenced)} metric names, {len(args.dashboards)} dashboards, "
          f"{sum(1 for e in exprs if e.kind == 'alert')} alerts")
    if problems:
        print(f"FAILED: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print("OK: every expression is valid and returns data; every metric name is exported.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
