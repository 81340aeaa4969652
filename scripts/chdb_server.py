#!/usr/bin/env python3
"""Serve the ClickHouse engine of PyPI `chdb-core` on loopback (fallback when no
clickhouse-server binary is on PATH). Started and stopped by scripts/stack; not meant to be
run by hand, although it can be:

    cd $CUSTOS_STACK_DIR/clickhouse && $CUSTOS_STACK_DIR/venv/bin/python \
        <repo>/scripts/chdb_server.py --workdir . --data ./data

How it works (chdb-core 26.9):
  * chdb's public connect() never listens. The private module-level
    `chdb._chdb.query(sql, fmt, path=DATA)` runs clickhouse-local's LocalServer, which reads
    ./config.xml from the process's working directory (listen_host, http_port, tcp_port,
    users_config) and can execute `SYSTEM START LISTEN HTTP` / `SYSTEM START LISTEN TCP`.
  * The listeners live only as long as that one query() call, and a process can make only one
    such call that starts servers (a second one fails with "EventNotifier is initialized
    twice"). So the whole server is ONE multi-statement call: start both listeners, then a
    query that never ends by itself ("hold" query). query() releases the GIL, so it runs in a
    worker thread while the main thread waits for SIGTERM/SIGINT.
  * The local session always authenticates as user `default` with an empty password from
    127.0.0.1 (hard-coded in LocalConnection), so users.xml must keep such a `default` user.
    Loopback addresses cannot be told apart by <networks>, so it is reachable on the loopback
    ports too; users.xml therefore grants it only SYSTEM LISTEN and SELECT on system.numbers
    (config.xml sets select_from_system_db_requires_grant so it cannot read other system tables).
    The hold query therefore reads system.numbers (sleepEachRow) instead of a FIFO through
    file(), which would need READ ON FILE (= any file on the machine) for that user.
  * Stop: on SIGTERM/SIGINT we send `KILL QUERY ... SYNC` for every running query over HTTP as
    the admin user from users.xml; the hold query ends, query() returns after LocalServer's
    normal shutdown (tables flushed and detached), and the process exits 0.
    If clients still hold connections (e.g. idle HTTP keep-alive ones), the engine waits ~5 s,
    logs "Closed connections. But N remain ... Will shutdown forcefully." and _exit()s without
    detaching tables: like a SIGKILL, committed inserts are on disk and survive (checked).
"""
import argparse
import base64
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

HOLD_MARKER = "custos-chdb-hold"


def log(msg):
    sys.stderr.write(time.strftime("%Y-%m-%d %H:%M:%S ") + "[chdb_server] " + msg + "\n")
    sys.stderr.flush()


def read_config(workdir, admin_user):
    cfg = ET.parse(os.path.join(workdir, "config.xml")).getroot()
    http_port = int(cfg.findtext("http_port"))
    host = cfg.findtext("listen_host") or "127.0.0.1"
    users_path = cfg.findtext("users_config") or "users.xml"
    if not os.path.isabs(users_path):
        users_path = os.path.join(workdir, users_path)
    users = ET.parse(users_path).getroot()
    node = users.find("users/" + admin_user)
    if node is None:
        raise SystemExit("chdb_server: user %r not found in %s" % (admin_user, users_path))
    password = node.findtext("password") or ""
    return host, http_port, password


def http_query(host, port, user, password, sql, timeout=30):
    req = urllib.request.Request("http://%s:%d/" % (host, port), data=sql.encode(), method="POST")
    token = base64.b64encode(("%s:%s" % (user, password)).encode()).decode()
    req.add_header("Authorization", "Basic " + token)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read().decode(errors="replace")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, help="directory holding config.xml and users.xml")
    ap.add_argument("--data", required=True, help="database directory (persistent)")
    ap.add_argument("--admin-user", default="custos_admin", help="user used to stop the server")
    ap.add_argument("--stop-timeout", type=float, default=30.0)
    args = ap.parse_args()

    workdir = os.path.abspath(args.workdir)
    data = os.path.abspath(args.data)
    os.makedirs(data, exist_ok=True)
    host, http_port, admin_password = read_config(workdir, args.admin_user)

    # `import chdb` opens (and closes) a throw-away in-memory connection that reads ./config.xml;
    # do it from an empty directory so that it does not see ours.
    neutral = os.path.join(workdir, "import-cwd")
    os.makedirs(neutral, exist_ok=True)
    os.chdir(neutral)
    import chdb  # noqa: E402
    import chdb._chdb as _chdb  # noqa: E402
    os.chdir(workdir)
    log("chdb %s (engine %s), pid %d, data %s, http %s:%d"
        % (chdb.__version__, getattr(chdb, "engine_version", "?"), os.getpid(), data, host, http_port))

    sql = ("SYSTEM START LISTEN HTTP; SYSTEM START LISTEN TCP; "
           "SELECT sum(sleepEachRow(0.5)) FROM system.numbers "
           "SETTINGS max_block_size = 1, max_threads = 1, max_execution_time = 0 /* %s */" % HOLD_MARKER)
    outcome = {}

    def serve():
        try:
            res = _chdb.query(sql, "CSV", path=data)
            err = res.error_message() if res.has_error() else ""
            outcome["error"] = err
        except Exception as e:  # engine errors surface as RuntimeError
            outcome["error"] = str(e)

    stop_requested = threading.Event()

    def on_signal(signum, _frame):
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    worker = threading.Thread(target=serve, name="chdb-server", daemon=True)
    worker.start()

    while worker.is_alive() and not stop_requested.is_set():
        stop_requested.wait(0.5)

    if not stop_requested.is_set():
        # The hold query ended by itself: listeners failed (port taken, bad config) or it was killed.
        err = outcome.get("error", "")
        if "cancelled" in err.lower() or "QUERY_WAS_CANCELLED" in err:
            log("hold query was cancelled (KILL QUERY from outside); server stopped")
            sys.exit(0)
        log("server stopped unexpectedly: %s" % (err.strip() or "no error reported"))
        sys.exit(1)

    log("stop requested; cancelling running queries")
    deadline = time.time() + args.stop_timeout
    kill_sql = "KILL QUERY WHERE query_id != queryID() SYNC FORMAT TSV"
    while worker.is_alive() and time.time() < deadline:
        try:
            http_query(host, http_port, args.admin_user, admin_password, kill_sql, timeout=10)
        except (urllib.error.URLError, OSError, ValueError) as e:
            log("KILL QUERY failed: %s" % e)
        worker.join(2.0)
    if worker.is_alive():
        log("server did not stop within %.0fs; exiting hard" % args.stop_timeout)
        os._exit(2)
    log("stopped cleanly")
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(0)


if __name__ == "__main__":
    main()
