#!/usr/bin/env python3
"""Keycloak password-grant logins per second with the custos-kafka event listener enabled
against disabled, in the same run (issue 15 item 6).

Against a running Keycloak that has the provider installed (scripts/keycloak up; use an instance
of your own, the realm's listeners are switched between rounds). Creates (or reuses) the realm
`bench-logins` with user events on, a public client with direct access grants and one user;
then alternates rounds with `eventsListeners` = [jboss-logging, custos-kafka] ("on") and
[jboss-logging] ("off") through the admin REST API. Each round runs --seconds of password-grant
logins from --clients threads and reports logins/s and latency. Standard library only.

    bench/keycloak-logins.py --base http://127.0.0.1:18280 --rounds 6 --seconds 20 --clients 4
"""

import argparse
import json
import statistics
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

REALM = "bench-logins"
CLIENT = "bench-cli"
USER = "bench-user"
LISTENER = "custos-kafka"


def call(method, url, token=None, body=None, form=None):
    headers = {}
    data = None
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read()
        return r.status, (json.loads(text) if text else None)


def admin_token(base, user, password):
    _, t = call("POST", f"{base}/realms/master/protocol/openid-connect/token",
                form={"grant_type": "password", "client_id": "admin-cli",
                      "username": user, "password": password})
    return t["access_token"]


def ensure_realm(base, token, password):
    try:
        call("GET", f"{base}/admin/realms/{REALM}", token)
        return
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise
    call("POST", f"{base}/admin/realms", token, {
        "realm": REALM, "enabled": True, "eventsEnabled": True,
        "clients": [{"clientId": CLIENT, "publicClient": True, "directAccessGrantsEnabled": True,
                     "standardFlowEnabled": False}],
        "users": [{"username": USER, "enabled": True, "email": f"{USER}@bench.invalid",
                   "emailVerified": True, "firstName": "Bench", "lastName": "User",
                   "credentials": [{"type": "password", "value": password,
                                    "temporary": False}]}],
    })


def set_listener(base, token, on):
    _, cfg = call("GET", f"{base}/admin/realms/{REALM}/events/config", token)
    listeners = [x for x in cfg.get("eventsListeners") or [] if x != LISTENER]
    if "jboss-logging" not in listeners:
        listeners.append("jboss-logging")
    if on:
        listeners.append(LISTENER)
    cfg["eventsListeners"] = listeners
    cfg["eventsEnabled"] = True
    call("PUT", f"{base}/admin/realms/{REALM}/events/config", token, cfg)
    _, check = call("GET", f"{base}/admin/realms/{REALM}/events/config", token)
    if (LISTENER in check["eventsListeners"]) != on:
        raise SystemExit(f"could not switch {LISTENER} {'on' if on else 'off'}")


def login_round(base, password, clients, seconds):
    url = f"{base}/realms/{REALM}/protocol/openid-connect/token"
    form = {"grant_type": "password", "client_id": CLIENT, "username": USER,
            "password": password, "scope": "openid"}
    lat, errors = [], [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker():
        mine, bad = [], 0
        while time.monotonic() < stop:
            t = time.monotonic()
            try:
                call("POST", url, form=form)
                mine.append((time.monotonic() - t) * 1000)
            except (urllib.error.URLError, OSError):
                bad += 1
        with lock:
            lat.extend(mine)
            errors[0] += bad

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.monotonic() - started
    lat.sort()
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else 0.0
    return len(lat) / wall, p(0.50), p(0.99), len(lat), errors[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="http://127.0.0.1:18080")
    ap.add_argument("--admin", default="admin")
    ap.add_argument("--admin-password", default="custos_kc_admin_pw")
    ap.add_argument("--user-password", default="bench-user-pw-1")
    ap.add_argument("--rounds", type=int, default=6, help="rounds, alternating on and off")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--warmup", type=float, default=10, help="untimed seconds of logins first")
    a = ap.parse_args()

    token = admin_token(a.base, a.admin, a.admin_password)
    ensure_realm(a.base, token, a.user_password)
    set_listener(a.base, token, True)
    login_round(a.base, a.user_password, a.clients, a.warmup)
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"\nKeycloak password-grant logins, realm {REALM}, {a.clients} clients, "
          f"{a.seconds:.0f} s per round, load average {load}\n")
    print("| round | custos-kafka | logins/s | p50 ms | p99 ms | logins | errors |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    rates = {True: [], False: []}
    for i in range(a.rounds):
        on = i % 2 == 0
        token = admin_token(a.base, a.admin, a.admin_password)
        set_listener(a.base, token, on)
        rate, p50, p99, n, err = login_round(a.base, a.user_password, a.clients, a.seconds)
        rates[on].append(rate)
        print(f"| {i + 1} | {'on' if on else 'off'} | {rate:.1f} | {p50:.1f} | {p99:.1f} | {n} | {err} |",
              flush=True)
    on, off = statistics.mean(rates[True]), statistics.mean(rates[False])
    print(f"\nmean on {on:.1f}/s, off {off:.1f}/s: on is {100 * (off - on) / off:+.1f}% slower")


if __name__ == "__main__":
    main()
