#!/usr/bin/env python3
"""Makes sure the demo realm has what the FHIR server (scripts/fhir) needs.

  fhir_realm.py ensure   realm missing: create it from deploy/keycloak/realm-custos.json
                         (dev_realm.py ensure). Realm present (created before the FHIR server
                         was added): add the SMART client scopes (user/ scopes mapped to the realm
                         role clinician), the clients smart-demo-app and
                         custos-fhir-server and the user dora.doctor that the realm file has and
                         the realm lacks, and the new optional scopes of smart-patient-app.
                         Nothing that exists is changed.

Environment: as dev_realm.py (CUSTOS_KEYCLOAK_URL, CUSTOS_KC_ADMIN_PASSWORD, CUSTOS_DEMO_REALM,
CUSTOS_FHIR_CLIENT_SECRET, CUSTOS_DEMO_USER_PASSWORD). Nothing secret is printed.
"""
import json
import os
import re
import sys
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dev_realm  # noqa: E402  (same folder)

FHIR_CLIENTS = ("smart-demo-app", "custos-fhir-server")
FHIR_USERS = ("dora.doctor",)
FHIR_ROLES = ("clinician",)


def fill_some(obj):
    """The object with the ${VAR} placeholders filled (only those it holds must be set)."""
    text = json.dumps(obj)

    def sub(m):
        return json.dumps(dev_realm.env(m.group(1)))[1:-1]

    return json.loads(re.sub(r"\$\{([A-Z0-9_]+)\}", sub, text))


def ensure():
    base, realm = dev_realm.BASE, dev_realm.REALM
    admin = dev_realm.token_for("master", "admin-cli", os.environ.get("CUSTOS_KC_ADMIN", "admin"),
                                dev_realm.env("CUSTOS_KC_ADMIN_PASSWORD"))
    status, _ = dev_realm.call("GET", f"{base}/admin/realms/{realm}", token=admin)
    if status == 404:
        dev_realm.ensure()
        return
    if status != 200:
        dev_realm.fail(f"GET realm {realm}: HTTP {status}")
    with open(dev_realm.REALM_FILE, encoding="utf-8") as f:
        rep = json.load(f)
    api = f"{base}/admin/realms/{realm}"
    _, scopes = dev_realm.call("GET", f"{api}/client-scopes", token=admin)
    have = {s["name"] for s in scopes}
    added = []
    for s in rep["clientScopes"]:
        if s["name"] not in have:
            st, body = dev_realm.call("POST", f"{api}/client-scopes", s, token=admin)
            if st not in (201, 204):
                dev_realm.fail(f"adding client scope {s['name']}: HTTP {st} {body}")
            added.append(s["name"])
    _, roles = dev_realm.call("GET", f"{api}/roles", token=admin)
    have_roles = {r["name"] for r in roles}
    for r in rep["roles"]["realm"]:
        if r["name"] in FHIR_ROLES and r["name"] not in have_roles:
            dev_realm.call("POST", f"{api}/roles", r, token=admin)
    _, scopes = dev_realm.call("GET", f"{api}/client-scopes", token=admin)
    for m in rep.get("scopeMappings", []):
        scope = next((s for s in scopes if s["name"] == m.get("clientScope")), None)
        if scope is None or not set(m.get("roles", [])) & set(FHIR_ROLES) or scope["name"] not in added:
            continue
        reps = []
        for name in m["roles"]:
            st, role = dev_realm.call("GET", f"{api}/roles/{urllib.parse.quote(name)}", token=admin)
            if st == 200:
                reps.append(role)
        dev_realm.call("POST", f"{api}/client-scopes/{scope['id']}/scope-mappings/realm", reps, token=admin)
    clients = [c for c in rep["clients"] if c["clientId"] in FHIR_CLIENTS]
    users = [u for u in rep["users"] if u["username"] in FHIR_USERS]
    st, body = dev_realm.call("POST", f"{api}/partialImport", fill_some(
        {"ifResourceExists": "SKIP", "clients": clients, "users": users}), token=admin, timeout=60)
    if st != 200:
        dev_realm.fail(f"partial import of the FHIR clients: HTTP {st} {body}")
    _, scopes = dev_realm.call("GET", f"{api}/client-scopes", token=admin)
    scope_ids = {s["name"]: s["id"] for s in scopes}
    for c in rep["clients"]:
        if c["clientId"] != "smart-patient-app":
            continue
        q = urllib.parse.urlencode({"clientId": c["clientId"]})
        _, found = dev_realm.call("GET", f"{api}/clients?{q}", token=admin)
        if not found:
            continue
        cid = found[0]["id"]
        _, current = dev_realm.call("GET", f"{api}/clients/{cid}/optional-client-scopes", token=admin)
        present = {s["name"] for s in current}
        for name in c.get("optionalClientScopes", []):
            if name not in present and name in scope_ids:
                dev_realm.call("PUT", f"{api}/clients/{cid}/optional-client-scopes/{scope_ids[name]}",
                               token=admin)
    print(f"fhir_realm: realm {realm} has the FHIR server's clients"
          + (f" (added scopes: {', '.join(added)})" if added else ""), file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] == "ensure":
        ensure()
    else:
        dev_realm.fail("usage: fhir_realm.py ensure")
