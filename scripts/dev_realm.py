#!/usr/bin/env python3
"""Development helper for the Keycloak that scripts/keycloak runs on loopback.

  dev_realm.py ensure            create the demo realm from deploy/keycloak/realm-custos.json
                                 unless it exists (placeholders ${VAR} are filled from the
                                 environment; a missing variable is an error)
                                 and add the audit feed's source client to an existing realm
                                 created before it (role audit_source, client scope
                                 custos-feed-audience, client custos-audit-source) and the
                                 console's client custos-console; then make
                                 sure the realm's user and admin events go to the
                                 custos-kafka event listener when the server has it
                                 (connectors/keycloak)
  dev_realm.py token USERNAME    print a fresh access token of a demo user (password grant of
                                 the custos-query client), for curl against the query API
  dev_realm.py source-token      print a fresh client-credentials access token of the audit
                                 source client custos-audit-source, for curl against the feed

Environment: CUSTOS_KEYCLOAK_URL (http://127.0.0.1:18080), CUSTOS_KC_ADMIN (admin),
CUSTOS_KC_ADMIN_PASSWORD, CUSTOS_DEMO_REALM (custos), CUSTOS_QUERY_CLIENT_SECRET,
CUSTOS_DEMO_USER_PASSWORD, CUSTOS_FEED_CLIENT_SECRET, CUSTOS_CONSOLE_CLIENT_SECRET. Nothing secret is printed except the token asked for.
Only the standard library is used (runs on any python3).
"""
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.environ.get("CUSTOS_KEYCLOAK_URL", "http://127.0.0.1:18080").rstrip("/")
REALM = os.environ.get("CUSTOS_DEMO_REALM", "custos")
REALM_FILE = os.path.join(REPO, "deploy", "keycloak", "realm-custos.json")


def fail(msg):
    print(f"dev_realm: ERROR: {msg}", file=sys.stderr)
    sys.exit(1)


def env(name):
    v = os.environ.get(name)
    if not v:
        fail(f"{name} is not set")
    return v


def call(method, url, data=None, token=None, form=False, timeout=30):
    headers = {}
    body = None
    if form:
        body = urllib.parse.urlencode(data).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif data is not None:
        body = json.dumps(data).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")[:300]
    except (urllib.error.URLError, OSError) as e:
        fail(f"{method} {url}: {e}")


def token_for(realm, client_id, username, password, secret=None):
    form = {"grant_type": "password", "client_id": client_id, "username": username,
            "password": password, "scope": "openid"}
    if secret:
        form["client_secret"] = secret
    status, body = call("POST", f"{BASE}/realms/{realm}/protocol/openid-connect/token", form, form=True)
    if status != 200 or not isinstance(body, dict) or "access_token" not in body:
        err = body.get("error_description") or body.get("error") if isinstance(body, dict) else status
        fail(f"no token for {username} in realm {realm}: HTTP {status} {err}")
    return body["access_token"]


def fill(text):
    missing = []

    def sub(m):
        v = os.environ.get(m.group(1))
        if v is None:
            missing.append(m.group(1))
            return ""
        return json.dumps(v)[1:-1]

    out = re.sub(r"\$\{([A-Z0-9_]+)\}", sub, text)
    if missing:
        fail("realm file needs " + ", ".join(sorted(set(missing))))
    return out


FEED_CLIENT = "custos-audit-source"
FEED_ROLE = "audit_source"
FEED_SCOPE = "custos-feed-audience"


def expect(status, body, what, ok=(200, 201, 204)):
    if status not in ok:
        fail(f"{what}: HTTP {status} {body}")


def ensure_feed_source(admin, rep):
    """Adds the audit source client of the realm file to a realm created before it."""
    base = f"{BASE}/admin/realms/{REALM}"
    status, _ = call("GET", f"{base}/roles/{FEED_ROLE}", token=admin)
    if status == 404:
        role = next(r for r in rep["roles"]["realm"] if r["name"] == FEED_ROLE)
        status, body = call("POST", f"{base}/roles", role, token=admin)
        expect(status, body, f"creating role {FEED_ROLE}")
    status, scopes = call("GET", f"{base}/client-scopes", token=admin)
    expect(status, scopes, "listing client scopes", ok=(200,))
    if not any(s.get("name") == FEED_SCOPE for s in scopes):
        scope = next(s for s in rep["clientScopes"] if s["name"] == FEED_SCOPE)
        status, body = call("POST", f"{base}/client-scopes", scope, token=admin)
        expect(status, body, f"creating client scope {FEED_SCOPE}")
        status, scopes = call("GET", f"{base}/client-scopes", token=admin)
    scope_id = next(s["id"] for s in scopes if s.get("name") == FEED_SCOPE)
    status, clients = call("GET", f"{base}/clients?clientId={FEED_CLIENT}", token=admin)
    expect(status, clients, f"looking up client {FEED_CLIENT}", ok=(200,))
    if clients:
        return
    client = next(c for c in rep["clients"] if c["clientId"] == FEED_CLIENT)
    status, body = call("POST", f"{base}/clients", client, token=admin)
    expect(status, body, f"creating client {FEED_CLIENT}")
    status, clients = call("GET", f"{base}/clients?clientId={FEED_CLIENT}", token=admin)
    expect(status, clients, f"looking up client {FEED_CLIENT}", ok=(200,))
    cid = clients[0]["id"]
    status, body = call("PUT", f"{base}/clients/{cid}/default-client-scopes/{scope_id}", token=admin)
    expect(status, body, f"adding {FEED_SCOPE} to {FEED_CLIENT}")
    status, sa = call("GET", f"{base}/clients/{cid}/service-account-user", token=admin)
    expect(status, sa, f"service account of {FEED_CLIENT}", ok=(200,))
    status, role = call("GET", f"{base}/roles/{FEED_ROLE}", token=admin)
    expect(status, role, f"role {FEED_ROLE}", ok=(200,))
    status, body = call("POST", f"{base}/users/{sa['id']}/role-mappings/realm", [role], token=admin)
    expect(status, body, f"granting {FEED_ROLE} to {FEED_CLIENT}")
    print(f"dev_realm: client {FEED_CLIENT} added to realm {REALM}", file=sys.stderr)


CONSOLE_CLIENT = "custos-console"


def ensure_console_client(admin, rep):
    """Adds the console's client of the realm file to a realm created before it (its client
    scopes custos-query-audience and custos-consent-audience exist since the realm's start)."""
    base = f"{BASE}/admin/realms/{REALM}"
    status, clients = call("GET", f"{base}/clients?clientId={CONSOLE_CLIENT}", token=admin)
    expect(status, clients, f"looking up client {CONSOLE_CLIENT}", ok=(200,))
    if clients:
        return
    client = next(c for c in rep["clients"] if c["clientId"] == CONSOLE_CLIENT)
    status, body = call("POST", f"{base}/clients", client, token=admin)
    expect(status, body, f"creating client {CONSOLE_CLIENT}")
    print(f"dev_realm: client {CONSOLE_CLIENT} added to realm {REALM}", file=sys.stderr)


def source_token():
    form = {"grant_type": "client_credentials", "client_id": FEED_CLIENT,
            "client_secret": env("CUSTOS_FEED_CLIENT_SECRET")}
    status, body = call("POST", f"{BASE}/realms/{REALM}/protocol/openid-connect/token", form, form=True)
    if status != 200 or not isinstance(body, dict) or "access_token" not in body:
        err = body.get("error_description") or body.get("error") if isinstance(body, dict) else status
        fail(f"no token for {FEED_CLIENT} in realm {REALM}: HTTP {status} {err}")
    return body["access_token"]


LISTENER = "custos-kafka"


def has_listener(admin):
    """Whether the server has the custos-kafka event listener installed."""
    status, info = call("GET", f"{BASE}/admin/serverinfo", token=admin)
    if status != 200 or not isinstance(info, dict):
        fail(f"GET serverinfo: HTTP {status}")
    listeners = info.get("providers", {}).get("eventsListener", {}).get("providers", {})
    return LISTENER in listeners


def ensure_events(admin):
    """User and admin events of the realm on, with the custos-kafka listener among its listeners."""
    url = f"{BASE}/admin/realms/{REALM}/events/config"
    status, cfg = call("GET", url, token=admin)
    if status != 200 or not isinstance(cfg, dict):
        fail(f"GET events config of {REALM}: HTTP {status}")
    listeners = cfg.get("eventsListeners") or []
    if LISTENER in listeners and cfg.get("eventsEnabled") and cfg.get("adminEventsEnabled"):
        return
    cfg["eventsListeners"] = listeners + ([LISTENER] if LISTENER not in listeners else [])
    cfg["eventsEnabled"] = True
    cfg["adminEventsEnabled"] = True
    status, body = call("PUT", url, cfg, token=admin)
    if status not in (200, 204):
        fail(f"PUT events config of {REALM}: HTTP {status} {body}")
    print(f"dev_realm: realm {REALM} sends its user and admin events to {LISTENER}", file=sys.stderr)


def ensure():
    admin = token_for("master", "admin-cli", os.environ.get("CUSTOS_KC_ADMIN", "admin"),
                      env("CUSTOS_KC_ADMIN_PASSWORD"))
    listener = has_listener(admin)
    if not listener:
        print(f"dev_realm: this Keycloak has no {LISTENER} event listener (restart it with "
              "scripts/keycloak to install it); the realm's events stay in Keycloak", file=sys.stderr)
    with open(REALM_FILE, encoding="utf-8") as f:
        rep = json.loads(fill(f.read()))
    status, _ = call("GET", f"{BASE}/admin/realms/{REALM}", token=admin)
    if status == 200:
        print(f"dev_realm: realm {REALM} exists", file=sys.stderr)
        ensure_feed_source(admin, rep)
        ensure_console_client(admin, rep)
        if listener:
            ensure_events(admin)
        return
    if status != 404:
        fail(f"GET realm {REALM}: HTTP {status}")
    rep["realm"] = REALM
    if not listener:
        rep["eventsListeners"] = [x for x in rep.get("eventsListeners", []) if x != LISTENER]
    status, body = call("POST", f"{BASE}/admin/realms", rep, token=admin, timeout=120)
    if status not in (201, 204):
        fail(f"creating realm {REALM}: HTTP {status} {body}")
    print(f"dev_realm: realm {REALM} created from {os.path.relpath(REALM_FILE, REPO)}", file=sys.stderr)


def main():
    if len(sys.argv) == 2 and sys.argv[1] == "ensure":
        ensure()
    elif len(sys.argv) == 2 and sys.argv[1] == "source-token":
        print(source_token())
    elif len(sys.argv) == 3 and sys.argv[1] == "token":
        print(token_for(REALM, "custos-query", sys.argv[2], env("CUSTOS_DEMO_USER_PASSWORD"),
                        env("CUSTOS_QUERY_CLIENT_SECRET")))
    else:
        fail("usage: dev_realm.py ensure | token USERNAME | source-token")


if __name__ == "__main__":
    main()
