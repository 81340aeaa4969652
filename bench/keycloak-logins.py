#!/usr/bin/env python3
"""Keycloak password-grant logins per second with the custos-kafka event listener enabled
against disabled, in the same run (issue 15 item 6).

Against a running Keycloak that has the provider installed (scripts/keycloak up; use an instance
of your own, the realm's listeners are switched between rounds). Creates (or reuses) the realm
`bench-logins` with user events on, a public client with direct access grants and one user;
then alternates rounds with `eventsListeners` = [jboss-logging, custos-kafka] ("on") and
[jboss-logging] ("off") through the admin REST API. Each round runs --seconds of password-grant
logins from --clients threads and reports logins/s and latency. Standard library only.

Rounds come in --pairs pairs, one round of each setting, the order alternating between pairs
(on/off, off/on, ...) so a drift of the machine's load over the run falls on both settings
alike. Each pair gives one difference, (off - on) / off of its two rates: the listener's cost
in that pair. Reported: every pair's difference, their mean with a 95% interval (Student t),
median, min and max; afterwards the listener's own counters (queue, spool, sent, dropped) from
Keycloak's management /metrics (--mgmt).

The realm's password policy is one PBKDF2-SHA256 iteration (--hash-iterations 1; 0 keeps
Keycloak's default of 600,000 iterations, a few logins per second on two cores). The hash costs
the same with and without the listener; taking it out leaves the work the listener adds a
larger share of each login, so its cost is measured more strictly, not less.

    bench/keycloak-logins.py --base http://127.0.0.1:18380 --mgmt http://127.0.0.1:18381 \
        --pairs 10 --seconds 10 --clients 4
"""

import argparse
import json
import math
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


def policy(iterations):
    return f"hashAlgorithm(pbkdf2-sha256) and hashIterations({iterations})" if iterations else ""


def ensure_realm(base, token, password, iterations):
    try:
        call("GET", f"{base}/admin/realms/{REALM}", token)
        # Bring the policy to what is asked; the stored hash follows it once the password is
        # set again.
        call("PUT", f"{base}/admin/realms/{REALM}", token, {"passwordPolicy": policy(iterations)})
        _, users = call("GET", f"{base}/admin/realms/{REALM}/users?exact=true&username={USER}", token)
        call("PUT", f"{base}/admin/realms/{REALM}/users/{users[0]['id']}/reset-password", token,
             {"type": "password", "value": password, "temporary": False})
        return
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise
    call("POST", f"{base}/admin/realms", token, {
        "realm": REALM, "enabled": True, "eventsEnabled": True,
        "passwordPolicy": policy(iterations),
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


# Two-sided 95% quantiles of Student's t, by degrees of freedom (beyond 30: 2.0).
T975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26,
        10: 2.23, 11: 2.20, 12: 2.18, 13: 2.16, 14: 2.14, 15: 2.13, 16: 2.12, 17: 2.11,
        18: 2.10, 19: 2.09, 20: 2.09, 25: 2.06, 30: 2.04}


def t975(df):
    return T975.get(df) or next((T975[k] for k in sorted(T975) if k >= df), 2.0)


def listener_counters(mgmt):
    """The custos_kafka_* samples of Keycloak's management /metrics."""
    try:
        with urllib.request.urlopen(f"{mgmt}/metrics", timeout=10) as r:
            text = r.read().decode()
    except (urllib.error.URLError, OSError) as e:
        return f"(metrics not read: {e})"
    lines = [x for x in text.splitlines() if x.startswith("custos_kafka_")]
    return ", ".join(" ".join(x.split()[:2]) for x in lines) or "(no custos_kafka_ metrics)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="http://127.0.0.1:18380")
    ap.add_argument("--mgmt", default="http://127.0.0.1:18381",
                    help="Keycloak management interface, for the listener's counters")
    ap.add_argument("--admin", default="admin")
    ap.add_argument("--admin-password", default="custos_kc_admin_pw")
    ap.add_argument("--user-password", default="bench-user-pw-1")
    ap.add_argument("--hash-iterations", type=int, default=1,
                    help="PBKDF2-SHA256 iterations of the realm's password policy (0: Keycloak's default)")
    ap.add_argument("--pairs", type=int, default=10, help="pairs of rounds, one on and one off")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--warmup", type=float, default=10, help="untimed seconds of logins first")
    a = ap.parse_args()

    token = admin_token(a.base, a.admin, a.admin_password)
    ensure_realm(a.base, token, a.user_password, a.hash_iterations)
    set_listener(a.base, token, True)
    login_round(a.base, a.user_password, a.clients, a.warmup)
    # Admin tokens live 60 s: a fresh one for every switch.
    set_listener(a.base, admin_token(a.base, a.admin, a.admin_password), False)
    login_round(a.base, a.user_password, a.clients, a.warmup / 2)
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"\nKeycloak password-grant logins, realm {REALM}, {a.clients} clients, "
          f"{a.seconds:.0f} s per round, {a.pairs} pairs, password policy "
          f"'{policy(a.hash_iterations) or 'Keycloak default'}', load average {load}\n")
    print(f"listener before: {listener_counters(a.mgmt)}\n")
    print("| pair | round | custos-kafka | logins/s | p50 ms | p99 ms | logins | errors |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    diffs, rates = [], {True: [], False: []}
    for pair in range(a.pairs):
        order = (True, False) if pair % 2 == 0 else (False, True)
        got = {}
        for k, on in enumerate(order):
            token = admin_token(a.base, a.admin, a.admin_password)
            set_listener(a.base, token, on)
            rate, p50, p99, n, err = login_round(a.base, a.user_password, a.clients, a.seconds)
            got[on] = rate
            rates[on].append(rate)
            print(f"| {pair + 1} | {2 * pair + k + 1} | {'on' if on else 'off'} | {rate:.1f} | "
                  f"{p50:.1f} | {p99:.1f} | {n} | {err} |", flush=True)
        diffs.append(100 * (got[False] - got[True]) / got[False])
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"\nload average after: {load}")
    print("per-pair cost of the listener, (off - on) / off, %: "
          + ", ".join(f"{d:+.1f}" for d in diffs))
    mean = statistics.mean(diffs)
    half = (t975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
            if len(diffs) > 1 else float("nan"))
    print(f"mean {mean:+.1f}% (95% interval {mean - half:+.1f}% to {mean + half:+.1f}%), "
          f"median {statistics.median(diffs):+.1f}%, min {min(diffs):+.1f}%, max {max(diffs):+.1f}%; "
          f"positive: on slower")
    print(f"mean rate on {statistics.mean(rates[True]):.1f}/s, off {statistics.mean(rates[False]):.1f}/s")
    print(f"listener after: {listener_counters(a.mgmt)}")


if __name__ == "__main__":
    main()
