#!/usr/bin/env python3
"""trustmesh's benchmark harness: the trustmesh proxy pair side by side with a direct
connection, Envoy configured as Istio configures its sidecars, nginx and HAProxy, in one run
on one machine, against one backend. Writes bench/RESULTS.md.

    python3 bench/bench.py                 # full run (~6 min + the build)
    BENCH_QUICK=1 python3 bench/bench.py   # smoke run, 2 s phases

See bench/README.md for what each figure means and every environment variable.
"""

import atexit
import datetime
import http.client
import json
import os
import platform
import resource
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RUN = os.path.abspath(os.environ.get("BENCH_RUN", os.path.join(HERE, ".run")))
OUT = os.path.abspath(os.environ.get("BENCH_OUT", os.path.join(HERE, "RESULTS.md")))
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")


def env_num(name, full, quick):
    v = os.environ.get(name)
    return float(v) if v else (quick if QUICK else full)


def secs(v):
    """Seconds as wrk/oha write them: `8s`, `2.5s` is not accepted, so whole seconds."""
    return f"{max(1, int(round(v)))}s"


LATENCY_S = env_num("BENCH_LATENCY_S", 10, 2)  # fixed-rate latency phase (oha -z)
MAX_S = env_num("BENCH_MAX_S", 8, 2)  # maximum-rate phase (wrk -d)
NEWCONN_S = env_num("BENCH_NEWCONN_S", 8, 2)  # new-connection phase
MANY_S = env_num("BENCH_MANY_S", 5, 2)  # 1000-connection phase
WARMUP_S = env_num("BENCH_WARMUP_S", 2, 1)
BULK_MIB = int(env_num("BENCH_BULK_MIB", 256, 64))
BULK_REPS = int(env_num("BENCH_BULK_REPS", 3, 1))
RATE = int(env_num("BENCH_RATE", 1000, 1000))
LAT_CONNS = 16
MAX_CONNS = 32
NEWCONN_CONNS = 16
MANY_CONNS = int(env_num("BENCH_MANY_CONNS", 1000, 1000))
# wrk's response timeout in the 1000-connection phase (default 2 s): that phase measures memory
# with the connections open; a saturated 2-CPU chain answers some of 1000 connections slowly.
MANY_TIMEOUT_S = env_num("BENCH_MANY_TIMEOUT_S", 10, 10)
# More errors than this share of a phase's requests and the figure is "failed", not a number.
ERROR_SHARE_FAILS = 0.01
PAIRS = [p.strip() for p in os.environ.get("BENCH_PAIRS", "direct,trustmesh,envoy,nginx,haproxy").split(",") if p.strip()]

# Addresses: the backend and the peer pairs on 127.0.0.1 (the shared peers' configs), the
# trustmesh pair on 127.0.8.2 (client) and 127.0.8.3 (server) with its control plane on
# 127.0.8.1; the example mesh uses 127.0.1.x / 127.0.2.x and `trustmesh up` 127.0.0.1:15012/15014.
BACKEND = ("127.0.0.1", 18080)
PEER_A = ("127.0.0.1", 15001)
TM_CP = "127.0.8.1"  # trustmesh's control plane (gRPC 15012, admin 15014)
TM_CLIENT = "127.0.8.2"
TM_CLIENT_APP = "127.0.9.2"  # the client workload's app address (nothing listens there)
TM_SERVER = "127.0.8.3"
TM_HOST = "server.bench.svc.cluster.local"
TM_NEWCONN_HOST = "server-newconn.bench.svc.cluster.local"
TM_HTTP_PORT = 18080
TM_TCP_PORT = 18081
TM_PROXY = f"http://{TM_CLIENT}:15001"
PATH_1K = "/1k"
PATH_BULK = "/bulk"
DIRECT_URL = f"http://{BACKEND[0]}:{BACKEND[1]}{PATH_1K}"

TRUSTMESH = os.environ.get("BENCH_TRUSTMESH", os.path.join(ROOT, "target", "release", "trustmesh"))
VENV = os.environ.get("BENCH_VENV", os.path.join(HERE, ".venv"))
NGINX_MODULES = os.environ.get("BENCH_NGINX_MODULES", "/usr/lib/nginx/modules")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def which(*cands):
    for c in cands:
        if not c:
            continue
        if os.sep in c:
            if os.access(c, os.X_OK):
                return c
        else:
            p = shutil.which(c) or shutil.which(c, path="/usr/sbin:/sbin:/usr/local/sbin")
            if p:
                return p
    return None


ENVOY = which(os.environ.get("BENCH_ENVOY"), os.path.join(VENV, "bin", "envoy"), "envoy")
NGINX = which(os.environ.get("BENCH_NGINX"), "nginx")
HAPROXY = which(os.environ.get("BENCH_HAPROXY"), "haproxy")
WRK = which(os.environ.get("BENCH_WRK"), "wrk")
OHA = which(os.environ.get("BENCH_OHA"), "oha", os.path.expanduser("~/.cargo/bin/oha"))
CURL = which("curl")
OPENSSL = which("openssl")


# ---------------------------------------------------------------------------------------
# processes: everything started here is stopped here, by PID


class Proc:
    live = []

    def __init__(self, name, argv, log, env=None):
        self.name = name
        self.argv = argv
        self.log = log
        record("start", argv)
        self.logf = open(log, "ab")
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.logf,
                                  stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        self.pid = self.p.pid
        Proc.live.append(self)

    def alive(self):
        return self.p.poll() is None

    def tree(self):
        return [self.pid] + descendants(self.pid) if self.alive() else []

    def stop(self, timeout=15):
        if self in Proc.live:
            Proc.live.remove(self)
        if self.alive():
            kids = descendants(self.pid)
            try:
                self.p.send_signal(signal.SIGTERM)
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"  {self.name} (pid {self.pid}) ignored SIGTERM for {timeout}s: SIGKILL")
                self.p.kill()
                self.p.wait()
            # Children the process should have stopped itself (nginx workers, `up`'s proxies).
            for k in kids:
                if pid_alive(k):
                    try:
                        os.kill(k, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        self.logf.close()

    def log_tail(self, n=5):
        try:
            with open(self.log, "rb") as f:
                lines = f.read().decode(errors="replace").strip().splitlines()
            return " | ".join(lines[-n:])
        except OSError:
            return ""


def stop_all():
    for p in reversed(list(Proc.live)):
        p.stop()


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def children_map():
    m = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        ppid = int(s[s.rindex(")") + 2:].split()[1])
        m.setdefault(ppid, []).append(int(d))
    return m


def descendants(pid):
    m = children_map()
    out, todo = [], [pid]
    while todo:
        for c in m.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def cpu_ticks(pids):
    t = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rindex(")") + 2:].split()
        t += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return t


def rss_kib(pids):
    t = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        t += int(line.split()[1])
        except OSError:
            continue
    return t


def private_kib(pids):
    """KiB of a process tree's memory no other process maps (USS: private clean + dirty). RSS also
    counts the binary's code pages, which the page cache shares with every process running the
    same binary (all proxies of a node), so both are reported."""
    t = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith(("Private_Clean:", "Private_Dirty:")):
                        t += int(line.split()[1])
        except OSError:
            continue
    return t


def rss_split(pid):
    """KiB of anonymous, file-backed and shared memory in a process's RSS."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                for k in ("RssAnon", "RssFile", "RssShmem"):
                    if line.startswith(k + ":"):
                        out[k] = int(line.split()[1])
    except OSError:
        pass
    return out


class RssSampler(threading.Thread):
    """The highest RSS of each proxy, sampled every 100 ms while a load runs."""

    def __init__(self, proxies):
        super().__init__(daemon=True)
        self.proxies = proxies
        self.peak = {k: 0 for k in proxies}
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            for k, pids in self.proxies.items():
                self.peak[k] = max(self.peak[k], rss_kib(pids()))
            self.stopped.wait(0.1)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *a):
        self.stopped.set()
        self.join()
        for k, pids in self.proxies.items():
            self.peak[k] = max(self.peak[k], rss_kib(pids()))


def cpu_snapshot():
    """(busy CPU-s of the whole machine, CPU-s of this harness and everything it started and
    reaped, wall-clock s)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    busy = (sum(v[:8]) - v[3] - v[4]) / CLK_TCK  # all but idle and iowait (guest is in user)
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        own += r.ru_utime + r.ru_stime
    # the processes still running (the backend, the pair): their CPU so far, with what their
    # reaped children (nginx workers) left in cutime/cstime
    for p in list(Proc.live):
        if p.alive():
            own += cpu_ticks(p.tree()) / CLK_TCK
            try:
                with open(f"/proc/{p.pid}/stat") as f:
                    st = f.read()
                fields = st[st.rindex(")") + 2:].split()
                own += (int(fields[13]) + int(fields[14])) / CLK_TCK
            except OSError:
                pass
    return busy, own, time.time()


def others_share(a, b):
    """Share of all CPUs other work used between two `cpu_snapshot`s."""
    wall = (b[2] - a[2]) * (os.cpu_count() or 1)
    return max(0.0, ((b[0] - a[0]) - (b[1] - a[1])) / wall) if wall > 0 else 0.0


BACKGROUND = []  # (section, share of the CPUs other work used meanwhile)


class background:
    """Measures the other work on the machine while a section of the run ran."""

    def __init__(self, label):
        self.label = label

    def __enter__(self):
        self.a = cpu_snapshot()

    def __exit__(self, *exc):
        share = others_share(self.a, cpu_snapshot())
        BACKGROUND.append((self.label, share))
        print(f"    other work on the machine meanwhile: {share * 100:.0f} % of the CPUs")


def busy_share(seconds=2.0):
    """Share of all cores busy over `seconds` (everything on the machine)."""

    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]
        return sum(v), idle

    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return 1 - (i1 - i0) / max(1, t1 - t0)


# ---------------------------------------------------------------------------------------
# commands, checks, HTTP probes

COMMANDS = []  # (section, command line)
SECTION = ["setup"]


def record(kind, argv):
    line = shlex.join(argv)
    if (SECTION[0], line) not in COMMANDS:
        COMMANDS.append((SECTION[0], line))


def run(argv, timeout, check_rc=True):
    record("run", argv)
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        raise Failed(f"{os.path.basename(argv[0])} did not finish within {timeout:.0f} s")
    out = r.stdout.decode(errors="replace")
    err = r.stderr.decode(errors="replace")
    if check_rc and r.returncode != 0:
        raise Failed(f"{os.path.basename(argv[0])} exit {r.returncode}: {(err or out).strip()[-300:]}")
    return out, err


class Failed(Exception):
    pass


def listening(addr, port):
    s = socket.socket()
    s.settimeout(0.3)
    try:
        s.connect((addr, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def http_get(addr, port, target, host=None, timeout=3):
    """Status of GET `target` (origin- or absolute-form) sent to addr:port."""
    c = http.client.HTTPConnection(addr, port, timeout=timeout)
    try:
        c.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
        c.putheader("Host", host or f"{addr}:{port}")
        c.endheaders()
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def wait_for(what, probe, procs, within=30):
    deadline = time.time() + within
    last = None
    while time.time() < deadline:
        for p in procs:
            if not p.alive():
                raise Failed(f"{p.name} exited ({p.p.returncode}): {p.log_tail()}")
        try:
            if probe():
                return
        except OSError as e:
            last = e
        time.sleep(0.2)
    raise Failed(f"{what} not ready within {within} s" + (f" ({last})" if last else ""))


# ---------------------------------------------------------------------------------------
# load generators


def wrk(url, conns, seconds, script=None, headers=(), tunnel=False, timeout=None):
    """wrk's result and errors. `tunnel`: the script is `connect_script`'s: each connection
    reads its (CONNECT 200 + tunnelled response) until EOF, which wrk counts as one request and
    one read error; the script's own check of each response replaces those."""
    argv = [WRK, "-t1", f"-c{conns}", f"-d{secs(seconds)}"]
    if timeout:
        argv.append(f"--timeout={secs(timeout)}")
    for h in headers:
        argv += ["-H", h]
    if script:
        argv += ["-s", script]
    argv.append(url)
    out, err = run(argv, timeout=seconds + 60)
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m or not rps:
        raise Failed(f"wrk printed no result: {(out + err).strip()[-300:]}")
    res = {"requests": int(m.group(1)), "rps": float(rps.group(1)), "errors": {}}
    se = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if se:
        for k, v in zip(("connect", "read", "write", "timeout"), se.groups()):
            if int(v):
                res["errors"][f"socket {k}"] = int(v)
    n = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if n:
        res["errors"]["non-2xx/3xx"] = int(n.group(1))
    if tunnel:
        t = re.search(r"tunnel responses: ok (\d+), bad (\d+)", out)
        if not t:
            raise Failed(f"the tunnel script printed no count: {(out + err).strip()[-300:]}")
        ok, bad = int(t.group(1)), int(t.group(2))
        reads = res["errors"].pop("socket read", 0)
        if reads > res["requests"]:
            res["errors"]["socket read"] = reads - res["requests"]
        if bad:
            res["errors"]["tunnelled response not 200 + 1 KiB"] = bad
        if ok + bad < res["requests"] - conns:
            res["errors"]["tunnel without a response"] = res["requests"] - ok - bad
    return res


def oha(url, proxy=None):
    argv = [OHA, "-z", secs(LATENCY_S), "-c", str(LAT_CONNS), "-q", str(RATE), "--latency-correction",
            "--no-tui", "--output-format", "json"]
    if proxy:
        argv += ["-x", proxy, "--no-pre-lookup"]
    argv.append(url)
    out, _ = run(argv, timeout=LATENCY_S + 60)
    try:
        j = json.loads(out)
    except ValueError:
        raise Failed(f"oha printed no JSON: {out.strip()[-300:]}")
    codes = {int(k): v for k, v in (j.get("statusCodeDistribution") or {}).items()}
    ok = sum(v for k, v in codes.items() if 200 <= k < 300)
    errors = {f"HTTP {k}": v for k, v in codes.items() if not 200 <= k < 300}
    for k, v in (j.get("errorDistribution") or {}).items():
        # requests still in flight when -z ends: an artifact of the duration, not an error
        if "aborted due to deadline" not in k:
            errors[k] = v
    p = j.get("latencyPercentiles") or {}
    if not ok or p.get("p50") is None:
        raise Failed("no successful request" + (f" ({fmt_errors(errors)})" if errors else ""))
    return {
        "requests": ok + sum(errors.values()),
        "rps": (j.get("summary") or {}).get("requestsPerSec"),
        "p50": p["p50"] * 1000, "p90": p["p90"] * 1000, "p99": p["p99"] * 1000,
        "errors": errors,
    }


def curl_bulk(url, proxy=None):
    argv = [CURL, "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}"]
    if proxy:
        argv += ["-p", "-x", proxy]
    argv.append(url)
    out, _ = run(argv, timeout=300)
    code, size, t = out.split()
    if code != "200":
        raise Failed(f"HTTP {code}")
    if int(size) != BULK_MIB * 1024 * 1024:
        raise Failed(f"{size} bytes received of {BULK_MIB * 1024 * 1024}")
    return int(size), float(t)


def fmt_errors(errors):
    return ", ".join(f"{k}: {v}" for k, v in errors.items())


NOTES = []  # footnotes: errors under the failing threshold, other remarks

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Lines every Envoy prints, not about the run.
LOG_IGNORE = ("no configured limit to the number of allowed active downstream connections",
              "caught ENVOY_SIGTERM", "caught SIGTERM", "exiting")


def log_warnings(label, paths, trustmesh=False):
    """Warnings and errors the processes of a pair logged, into the report's remarks."""
    seen = {}
    for path in paths:
        try:
            with open(path, errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            line = ANSI.sub("", line).strip()
            if not line or any(i in line for i in LOG_IGNORE):
                continue
            if trustmesh and not re.search(r"\b(WARN|ERROR)\b", line):
                continue
            if not trustmesh and "[info]" in line:
                continue
            # without the timestamp and pid, so repeats fold
            msg = re.sub(r"^\S*\d{4}-\d\d-\d\d[T ][\d:.]+Z?\]?\s*(\[\d+\])?\s*", "", line)
            msg = re.sub(r"\d+#\d+: \*?\d*\s*", "", msg)
            seen[msg] = seen.get(msg, 0) + 1
    for msg, n in list(seen.items())[:5]:
        note = f"{label}: logged {n}× `{msg[:300]}`"
        print(f"    ! {note}")
        NOTES.append(note)


def judged(label, phase, res):
    """`res` when its errors stay under the threshold (noted), else Failed."""
    errs = sum(res["errors"].values())
    if errs:
        msg = f"{label}, {phase}: {errs} errors of {res['requests']} requests ({fmt_errors(res['errors'])})"
        print(f"    ! {msg}")
        if res["requests"] == 0 or errs > ERROR_SHARE_FAILS * res["requests"]:
            raise Failed(f"{errs} errors of {res['requests']} ({fmt_errors(res['errors'])})")
        NOTES.append(msg)
    return res


# ---------------------------------------------------------------------------------------
# the pairs


class Mode:
    """One configuration of one pair: how it is reached and what is measured on it."""

    def __init__(self, key, label, group, phases, ref=None, tunnel=False):
        self.tunnel = tunnel  # new connections as CONNECT tunnels (trustmesh's L4 path)
        self.key = key
        self.label = label
        self.group = group  # "l7" | "l4" | "full" (new connections) | "direct"
        self.phases = phases
        self.ref = ref  # the Envoy mode of the same kind, for ratios


RESULTS = {}  # mode key -> {figure: number | "failed: …"}


def fig(key, name, value):
    RESULTS.setdefault(key, {})[name] = value


def failed_all(key, names, reason):
    for n in names:
        RESULTS.setdefault(key, {}).setdefault(n, f"failed: {reason}")


REQ_FIGS = ["p50", "p90", "p99", "max_rps", "cpu_100k", "idle_a", "idle_b", "priv_a", "priv_b", "load_a", "load_b",
            "many_a", "many_b", "kib_conn_a", "kib_conn_pair"]
NEWCONN_FIGS = ["conns_s", "cpu_ms_conn"]
BULK_FIGS = ["bulk_mbs", "bulk_cpu_gib"]


def figs_of(phases):
    out = []
    if "req" in phases:
        out += REQ_FIGS
    if "newconn" in phases:
        out += NEWCONN_FIGS
    if "bulk" in phases:
        out += BULK_FIGS
    return out


class Target:
    """How the load reaches a pair: URL (+ proxy for trustmesh's forward proxy)."""

    def __init__(self, url, proxy=None, newconn_url=None, bulk_url=None):
        self.url = url
        self.proxy = proxy
        self.newconn_url = newconn_url or url
        self.bulk_url = bulk_url


def lua_script(absolute_url, host):
    path = os.path.join(RUN, "lua", re.sub(r"[^a-z0-9]+", "-", absolute_url) + ".lua")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(f'-- absolute-form requests for an HTTP forward proxy\n'
                f'wrk.path = "{absolute_url}"\nwrk.headers["Host"] = "{host}"\n')
    return path


def connect_script(authority, path):
    """wrk Lua: each connection sends `CONNECT authority` and, in the same write, a GET with
    `Connection: close` for the tunnel; the server's close ends the tunnel, so every request
    is a new client connection and a new tunnel (one new mTLS connection between the proxies)."""
    path_ = os.path.join(RUN, "lua", "connect-" + re.sub(r"[^a-z0-9]+", "-", authority + path) + ".lua")
    os.makedirs(os.path.dirname(path_), exist_ok=True)
    with open(path_, "w") as f:
        f.write(f"""-- CONNECT tunnels through an HTTP forward proxy, one per connection
local req = "CONNECT {authority} HTTP/1.1\\r\\nHost: {authority}\\r\\n\\r\\n" ..
            "GET {path} HTTP/1.1\\r\\nHost: {authority}\\r\\nConnection: close\\r\\n\\r\\n"
local calls = 0
local threads = {{}}
ok, bad = 0, 0
function setup(thread) table.insert(threads, thread) end
-- wrk checks the first request() with an HTTP parser that stops at CONNECT: give it a GET
function request()
  calls = calls + 1
  if calls == 1 then return wrk.format("GET", "/") end
  return req
end
-- the body of the CONNECT's 200 (read until the close) is the tunnelled response
function response(status, headers, body)
  if status == 200 and body:find("^HTTP/1%.1 200 ") and body:find("\\r\\n\\r\\n" .. string.rep("x", 1023) .. "\\n$") then
    ok = ok + 1
  else
    bad = bad + 1
  end
end
function done(summary, latency, requests)
  local o, b = 0, 0
  for _, t in ipairs(threads) do o = o + t:get("ok"); b = b + t:get("bad") end
  io.write(string.format("tunnel responses: ok %d, bad %d\\n", o, b))
end
""")
    return path_


def measure(mode, target, proxies):
    """Runs the phases of `mode`. `proxies`: {"a": fn -> pids, "b": fn -> pids}, or {} for direct."""
    key, label = mode.key, mode.label
    pair = lambda: [pid for f in proxies.values() for pid in f()]  # noqa: E731
    script = None
    wrk_url = target.url
    if target.proxy:  # trustmesh: wrk sends absolute-form through the client proxy
        host = target.url.split("/")[2]
        script = lua_script(target.url, host)
        wrk_url = target.proxy

    def phase(names, fn):
        try:
            fn()
        except Failed as e:
            print(f"    ! {label}: {e}")
            failed_all(key, names, str(e))

    if "req" in mode.phases:
        if proxies:
            idle = {k: rss_kib(f()) for k, f in proxies.items()}
            fig(key, "idle_a", idle["a"])
            fig(key, "idle_b", idle["b"])
            priv = {k: private_kib(f()) for k, f in proxies.items()}
            fig(key, "priv_a", priv["a"])
            fig(key, "priv_b", priv["b"])
            print(f"    idle RSS: A {idle['a'] / 1024:.1f} MiB, B {idle['b'] / 1024:.1f} MiB; "
                  f"private (USS): A {priv['a'] / 1024:.1f} MiB, B {priv['b'] / 1024:.1f} MiB")
        # warm-up (pools, caches); its errors are reported, its figures are not used
        phase([], lambda: judged(label, "warm-up", wrk(wrk_url, LAT_CONNS, WARMUP_S, script)))

        def latency():
            if proxies:
                # the direct baseline again, just before: "added" compares runs adjacent in time,
                # so a burst of other work on the machine does not skew one pair against another
                d = judged(label, f"direct baseline @{RATE} req/s", oha(DIRECT_URL))
                for p in ("p50", "p90", "p99"):
                    fig(key, "direct_" + p, d[p])
                print(f"    direct just before:            p50 {d['p50']:.3f} p90 {d['p90']:.3f} "
                      f"p99 {d['p99']:.3f} ms")
            r = judged(label, f"latency @{RATE} req/s", oha(target.url, target.proxy))
            for p in ("p50", "p90", "p99"):
                fig(key, p, r[p])
            print(f"    latency @{RATE} req/s, {LAT_CONNS} conns: p50 {r['p50']:.3f} p90 {r['p90']:.3f} "
                  f"p99 {r['p99']:.3f} ms ({r['requests']} requests, {r['rps']:.0f} req/s)")

        phase(["p50", "p90", "p99"], latency)

        def maxrate():
            with RssSampler(proxies) as s:
                c0 = cpu_ticks(pair())
                r = judged(label, "max rate", wrk(wrk_url, MAX_CONNS, MAX_S, script))
                c1 = cpu_ticks(pair())
            fig(key, "max_rps", r["rps"])
            line = f"    max: {r['rps']:.0f} req/s ({r['requests']} requests)"
            if proxies:
                cpu = (c1 - c0) / CLK_TCK
                fig(key, "cpu_100k", cpu / r["requests"] * 1e5)
                fig(key, "load_a", s.peak["a"])
                fig(key, "load_b", s.peak["b"])
                line += (f", pair CPU {cpu:.2f} s = {cpu / r['requests'] * 1e5:.2f} CPU-s/100k req, "
                         f"RSS A {s.peak['a'] / 1024:.1f} MiB B {s.peak['b'] / 1024:.1f} MiB")
            print(line)

        phase(["max_rps", "cpu_100k", "load_a", "load_b"], maxrate)

        def many():
            with RssSampler(proxies) as s:
                r = judged(label, f"{MANY_CONNS} connections",
                           wrk(wrk_url, MANY_CONNS, MANY_S, script, timeout=MANY_TIMEOUT_S))
            fig(key, "many_a", s.peak["a"])
            fig(key, "many_b", s.peak["b"])
            idle = RESULTS[key]
            if isinstance(idle.get("idle_a"), (int, float)):
                fig(key, "kib_conn_a", (s.peak["a"] - idle["idle_a"]) / MANY_CONNS)
                fig(key, "kib_conn_pair", (s.peak["a"] + s.peak["b"] - idle["idle_a"] - idle["idle_b"]) / MANY_CONNS)
            print(f"    {MANY_CONNS} connections: {r['rps']:.0f} req/s, RSS A {s.peak['a'] / 1024:.1f} MiB "
                  f"B {s.peak['b'] / 1024:.1f} MiB")

        if proxies:
            phase(["many_a", "many_b", "kib_conn_a", "kib_conn_pair"], many)

    if "newconn" in mode.phases:
        def newconn():
            nscript, nurl, tunnel = None, target.newconn_url, False
            if target.proxy and mode.tunnel:
                host = target.bulk_url.split("/")[2]
                nscript, nurl, tunnel = connect_script(host, PATH_1K), target.proxy, True
            elif target.proxy:
                nscript = lua_script(target.newconn_url, target.newconn_url.split("/")[2])
                nurl = target.proxy
            if proxies:  # a short warm-up: first connections, lazily built state
                judged(label, "warm-up", wrk(nurl, NEWCONN_CONNS, 1, nscript, ["Connection: close"], tunnel))
            c0 = cpu_ticks(pair())
            r = judged(label, "new connections",
                       wrk(nurl, NEWCONN_CONNS, NEWCONN_S, nscript, ["Connection: close"], tunnel))
            c1 = cpu_ticks(pair())
            fig(key, "conns_s", r["rps"])
            line = f"    new connections: {r['rps']:.0f} conns/s ({r['requests']})"
            if proxies:
                ms = (c1 - c0) / CLK_TCK * 1000 / r["requests"]
                fig(key, "cpu_ms_conn", ms)
                line += f", pair CPU {ms:.3f} ms per connection"
            print(line)

        phase(NEWCONN_FIGS, newconn)

    if "bulk" in mode.phases and target.bulk_url:
        def bulk():
            best = None
            for _ in range(BULK_REPS):
                c0 = cpu_ticks(pair())
                size, t = curl_bulk(target.bulk_url, target.proxy)
                c1 = cpu_ticks(pair())
                mbs = size / t / 1e6
                cpu_gib = (c1 - c0) / CLK_TCK / (size / 2**30)
                if best is None or mbs > best[0]:
                    best = (mbs, cpu_gib)
            fig(key, "bulk_mbs", best[0])
            line = f"    bulk: {best[0]:.0f} MB/s (best of {BULK_REPS}, {BULK_MIB} MiB)"
            if proxies:
                fig(key, "bulk_cpu_gib", best[1])
                line += f", pair CPU {best[1]:.2f} s/GiB"
            print(line)

        phase(BULK_FIGS, bulk)


def subst(name, out_name=None):
    with open(os.path.join(HERE, "peers", name)) as f:
        s = f.read()
    s = (s.replace("@CERTS@", os.path.join(RUN, "certs")).replace("@RUN@", RUN)
         .replace("@NGINX_MODULES@", NGINX_MODULES))
    path = os.path.join(RUN, "conf", out_name or name)
    with open(path, "w") as f:
        f.write(s)
    return path


PEER_PORTS = [("127.0.0.1", 15001), ("127.0.0.1", 15443), ("127.0.0.1", 19000), ("127.0.0.1", 19001)]


def peer_argv(kind, conf, log_prefix):
    if kind == "envoy":
        return [ENVOY, "-c", conf, "--concurrency", "1", "--disable-hot-restart", "--log-level", "warn"]
    if kind == "nginx":
        return [NGINX, "-e", os.path.join(RUN, "logs", log_prefix + ".err"), "-c", conf]
    if kind == "haproxy":
        return [HAPROXY, "-db", "-f", conf]
    raise ValueError(kind)


PEER_FILES = {
    "envoy": {"http": ("envoy-a-http.yaml", "envoy-b-http.yaml"),
              "tcp": ("envoy-a-tcp.yaml", "envoy-b-tcp.yaml"),
              "tcpfull": ("envoy-a-tcpfull.yaml", "envoy-b-tcpfull.yaml")},
    "nginx": {"http": ("nginx-a-http.conf", "nginx-b-http.conf"),
              "tcp": ("nginx-a-tcp.conf", "nginx-b-tcp.conf"),
              "tcpfull": ("nginx-a-tcpfull.conf", "nginx-b-tcpfull.conf")},
    "haproxy": {"http": ("haproxy-a-http.cfg", "haproxy-b-http.cfg"),
                "tcp": ("haproxy-a-tcp.cfg", "haproxy-b-tcp.cfg"),
                "tcpfull": ("haproxy-a-tcpfull.cfg", "haproxy-b-tcpfull.cfg")},
}
PEER_NAMES = {"envoy": "Envoy", "nginx": "nginx", "haproxy": "HAProxy"}
PEER_BIN = {"envoy": lambda: ENVOY, "nginx": lambda: NGINX, "haproxy": lambda: HAPROXY}


def peer_modes(kind):
    n = PEER_NAMES[kind]
    return [
        Mode(f"{kind}-http", f"{n} L7 (HTTP/1.1, pooled mTLS)", "l7", ["req"], "envoy-http"),
        Mode(f"{kind}-tcp", f"{n} L4 (TCP, one mTLS conn per client conn)", "l4", ["req", "bulk"], "envoy-tcp"),
        Mode(f"{kind}-tcpfull", f"{n} L4, resumption off", "full", ["newconn"], "envoy-tcpfull"),
    ]


def run_peer(kind):
    for mode in peer_modes(kind):
        with background(mode.label):
            run_peer_mode(kind, mode)


def run_peer_mode(kind, mode):
    SECTION[0] = mode.label
    print(f"\n== {mode.label}")
    if not PEER_BIN[kind]():
        failed_all(mode.key, figs_of(mode.phases), f"{kind} not installed (bench/install-peers.sh)")
        print(f"    ! {kind} not found")
        return
    variant = mode.key.split("-", 1)[1]
    fa, fb = PEER_FILES[kind][variant]
    procs = []
    for side in ("a", "b"):  # nginx's own error_log (in the conf) is per side, not per mode
        try:
            os.remove(os.path.join(RUN, f"nginx-{side}.err"))
        except FileNotFoundError:
            pass
    try:
        busy = [f"{a}:{p}" for a, p in PEER_PORTS if listening(a, p)]
        if busy:
            raise Failed(f"address in use: {', '.join(busy)}")
        b = Proc(f"{kind} B", peer_argv(kind, subst(fb), f"{mode.key}-b"),
                 os.path.join(RUN, "logs", f"{mode.key}-b.log"))
        procs.append(b)
        wait_for(f"{kind} B", lambda: listening("127.0.0.1", 15443), procs, 20)
        a = Proc(f"{kind} A", peer_argv(kind, subst(fa), f"{mode.key}-a"),
                 os.path.join(RUN, "logs", f"{mode.key}-a.log"))
        procs.append(a)
        wait_for(f"{mode.label} chain", lambda: http_get(*PEER_A, PATH_1K) == 200, procs, 20)
        time.sleep(0.5)
        url = f"http://{PEER_A[0]}:{PEER_A[1]}"
        # the process trees once (nginx: master + worker), not a /proc scan per sample
        ta, tb = a.tree(), b.tree()
        measure(mode, Target(url + PATH_1K, bulk_url=url + PATH_BULK),
                {"a": lambda: [p for p in ta if pid_alive(p)],
                 "b": lambda: [p for p in tb if pid_alive(p)]})
        for p in procs:
            if not p.alive():
                raise Failed(f"{p.name} exited during the run: {p.log_tail()}")
    except Failed as e:
        print(f"    ! {mode.label}: {e}")
        failed_all(mode.key, figs_of(mode.phases), str(e))
    finally:
        for p in reversed(procs):
            p.stop()
        log_warnings(mode.label, [p.log for p in procs] + [os.path.join(RUN, f"nginx-{s}.err") for s in "ab"]
                     + [os.path.join(RUN, "logs", f"{mode.key}-{s}.err") for s in "ab"])
    time.sleep(0.5)


TM_MODES = [
    Mode("tm-http", "trustmesh HTTP (pooled HTTP/2 mTLS, authz, metrics)", "l7", ["req"], "envoy-http"),
    Mode("tm-newconn", "trustmesh HTTP, maxRequestsPerConnection: 1", "full", ["newconn"], "envoy-tcpfull"),
    Mode("tm-tcpfull", "trustmesh TCP (a CONNECT tunnel per connection)", "full", ["newconn"], "envoy-tcpfull",
         tunnel=True),
    Mode("tm-tcp", "trustmesh TCP (CONNECT to a tcp- port)", "l4", ["bulk"], "envoy-tcp"),
]
TM_INFO = {}


def run_trustmesh():
    """The processes `trustmesh up bench/trustmesh` runs, with the same arguments, started here
    so that the control plane listens on 127.0.8.1 (not `up`'s fixed 127.0.0.1:15012/15014,
    which the example mesh and the end-to-end tests use) and the proxies' PIDs are known."""
    SECTION[0] = "trustmesh"
    print("\n== trustmesh")
    keys = [(m.key, figs_of(m.phases)) for m in TM_MODES]
    if not os.access(TRUSTMESH, os.X_OK):
        for k, f in keys:
            failed_all(k, f, f"no binary at {TRUSTMESH}")
        return
    busy = [f"{a}:{p}" for a, p in [(TM_CP, 15012), (TM_CP, 15014), (TM_CLIENT, 15001), (TM_CLIENT, 15000),
                                    (TM_SERVER, 15000), (TM_SERVER, TM_HTTP_PORT), (TM_SERVER, TM_TCP_PORT)]
            if listening(a, p)]
    if busy:
        for k, f in keys:
            failed_all(k, f, f"address in use: {', '.join(busy)}")
        print(f"    ! address in use: {busy}")
        return
    state = os.path.join(RUN, "tm-state")
    config = os.path.join(HERE, "trustmesh")
    shutil.rmtree(state, ignore_errors=True)
    logs = os.path.join(state, "logs")
    os.makedirs(logs)
    env = dict(os.environ, TRUSTMESH_STATE=state)
    procs = []
    try:
        cp = Proc("trustmesh control plane",
                  [TRUSTMESH, "control-plane", "--config", config, "--state", state, "--listen", TM_CP],
                  os.path.join(logs, "control-plane.log"), env)
        procs.append(cp)
        wait_for("trustmesh control plane", lambda: http_get(TM_CP, 15014, "/healthz") == 200, procs, 30)
        pids = {}
        for side, name, app in (("a", "client", TM_CLIENT_APP), ("b", "server", BACKEND[0])):
            d = os.path.join(state, "proxies", "bench", name)
            run([TRUSTMESH, "token", "create", f"bench/{name}", "--config", config, "--state", state,
                 "--out", os.path.join(d, "token")], timeout=30)
            p = Proc(f"trustmesh proxy bench/{name}",
                     [TRUSTMESH, "proxy", "--workload", f"bench/{name}", "--control-plane", f"{TM_CP}:15012",
                      "--bundle", os.path.join(d, "bundle.json"), "--token-file", os.path.join(d, "token"),
                      "--app-address", app, "--workload-api-socket", os.path.join(d, "workload-api.sock")],
                     os.path.join(logs, f"proxy-bench-{name}.log"), env)
            procs.append(p)
            pids[side] = p.pid

        def ready():
            for addr in (TM_CLIENT, TM_SERVER):
                if http_get(addr, 15000, "/ready") != 200:
                    return False
            return http_get(TM_CLIENT, 15001, f"http://{TM_HOST}:{TM_HTTP_PORT}{PATH_1K}",
                            f"{TM_HOST}:{TM_HTTP_PORT}") == 200

        wait_for("trustmesh pair", ready, procs, 60)
        time.sleep(1)
        TM_INFO["cp_rss"] = rss_kib([cp.pid])
        TM_INFO["split"] = {s: rss_split(pids[s]) for s in ("a", "b")}

        def side(s):
            return lambda: [pids[s]] if pid_alive(pids[s]) else []

        proxies = {"a": side("a"), "b": side("b")}
        target = Target(f"http://{TM_HOST}:{TM_HTTP_PORT}{PATH_1K}", proxy=TM_PROXY,
                        newconn_url=f"http://{TM_NEWCONN_HOST}:{TM_HTTP_PORT}{PATH_1K}",
                        bulk_url=f"http://{TM_HOST}:{TM_TCP_PORT}{PATH_BULK}")
        for mode in TM_MODES:
            SECTION[0] = mode.label
            print(f"  -- {mode.label}")
            measure(mode, target, proxies)
            for p in procs:
                if not p.alive():
                    raise Failed(f"{p.name} exited during the run: {p.log_tail()}")
    except Failed as e:
        print(f"    ! trustmesh: {e}")
        for k, f in keys:
            failed_all(k, f, str(e))
    finally:
        for p in reversed(procs):
            p.stop(20)
        log_warnings("trustmesh", [p.log for p in procs], trustmesh=True)


def run_direct():
    mode = Mode("direct", "direct (no proxy)", "direct", ["req", "newconn", "bulk"])
    SECTION[0] = mode.label
    print(f"\n== {mode.label}")
    url = f"http://{BACKEND[0]}:{BACKEND[1]}"
    measure(mode, Target(url + PATH_1K, bulk_url=url + PATH_BULK), {})


# ---------------------------------------------------------------------------------------
# setup: certificates, backend, machine


def version(argv, pattern=None):
    try:
        r = subprocess.run(argv, capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    s = (r.stdout + r.stderr).decode(errors="replace").strip()
    if pattern:
        m = re.search(pattern, s)
        return m.group(0) if m else s.splitlines()[0] if s else "?"
    return s.splitlines()[0] if s else "?"


def machine():
    info = {}
    info["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info["nproc"] = os.cpu_count()
    with open("/proc/meminfo") as f:
        kb = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))
    info["mem"] = f"{kb / 1048576:.1f} GiB"
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info["cpu"] = model
    info["kernel"] = f"{platform.system()} {platform.release()}"
    commit = version(["git", "-C", ROOT, "rev-parse", "--short=12", "HEAD"])
    # The results file itself is what this run rewrites: it does not make the build dirty.
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no", "--",
                            ".", ":(exclude)bench/RESULTS.md"], capture_output=True).stdout.strip()
    info["trustmesh"] = commit + (" + uncommitted changes in the working tree" if dirty else "")
    info["envoy"] = version([ENVOY, "--version"], r"\d+\.\d+\.\d+/\w+/\w+/BoringSSL|\d+\.\d+\.\d+") if ENVOY else "not installed"
    info["nginx"] = version([NGINX, "-v"], r"nginx/[\d.]+") if NGINX else "not installed"
    info["haproxy"] = version([HAPROXY, "-v"], r"HAProxy version \S+") if HAPROXY else "not installed"
    info["wrk"] = version([WRK, "-v"], r"wrk \S+") if WRK else "not installed"
    info["oha"] = version([OHA, "--version"]) if OHA else "not installed"
    info["curl"] = version([CURL, "--version"], r"curl \S+") if CURL else "not installed"
    info["openssl"] = version([OPENSSL, "version"]) if OPENSSL else "?"
    return info


def setup():
    SECTION[0] = "setup"
    for d in ("conf", "logs", "tmp", "www", "lua"):
        os.makedirs(os.path.join(RUN, d), exist_ok=True)
    os.chmod(RUN, 0o755)
    # the backend's content: world-readable (nginx workers run as nobody when started by root)
    www = os.path.join(RUN, "www")
    os.chmod(www, 0o755)
    with open(os.path.join(www, "1k"), "wb") as f:
        f.write(b"x" * 1023 + b"\n")
    bulk = os.path.join(www, "bulk")
    if not os.path.exists(bulk) or os.path.getsize(bulk) != BULK_MIB * 1024 * 1024:
        with open(bulk, "wb") as f:
            chunk = os.urandom(1024 * 1024)
            for _ in range(BULK_MIB):
                f.write(chunk)
    for n in ("1k", "bulk"):
        os.chmod(os.path.join(www, n), 0o644)
    # test PKI for the peers (trustmesh issues its own SVIDs from its CA)
    certs = os.path.join(RUN, "certs")
    shutil.rmtree(certs, ignore_errors=True)
    run([os.path.join(HERE, "peers", "gen-certs.sh"), certs], timeout=60)


def start_backend():
    busy = [f"{a}:{p}" for a, p in [BACKEND, ("127.0.0.1", TM_TCP_PORT)] if listening(a, p)]
    if busy:
        raise Failed(f"backend address in use: {', '.join(busy)}")
    conf = subst("backend-nginx.conf")
    p = Proc("backend nginx", [NGINX, "-e", os.path.join(RUN, "logs", "backend.err"), "-c", conf],
             os.path.join(RUN, "logs", "backend.log"))
    wait_for("backend", lambda: http_get(*BACKEND, PATH_1K) == 200, [p], 20)
    return p


# ---------------------------------------------------------------------------------------
# the report


def num(v, digits=2):
    if isinstance(v, str):
        return v
    if v is None:
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}f}"


def get(key, name):
    return RESULTS.get(key, {}).get(name)


def isnum(v):
    return isinstance(v, (int, float))


def ratio(v, ref):
    if isnum(v) and isnum(ref) and ref:
        return f"{v / ref:.2f}×"
    return "–"


def added(key, p):
    """The pair's percentile minus the direct run's measured just before it."""
    v, d = get(key, p), get(key, "direct_" + p)
    if isnum(v) and isnum(d):
        return v - d
    if isinstance(v, str):
        return v
    if isnum(v):
        return f"{v:.3f} absolute (no direct run)"
    return v


def cell(v, ref=None, digits=2, show_ratio=True):
    s = num(v, digits)
    if show_ratio and ref is not None and isnum(v) and isnum(ref):
        s += f" ({ratio(v, ref)})"
    return s


def mib(v):
    return f"{v / 1024:.1f}" if isnum(v) else (v if v else "–")


def req_rows(keys):
    lines = [
        "| pair | added p50 ms | added p90 ms | added p99 ms | max req/s (% of direct) | CPU-s / 100k req (pair) "
        "| idle RSS MiB A / B | idle private (USS) MiB A / B | RSS at max load A / B | RSS at 1000 conns A / B "
        "| KiB / conn A (pair) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    direct_max = get("direct", "max_rps")
    for key, label, ref in keys:
        if key == "direct":
            if key not in RESULTS:
                continue
            lines.append(
                f"| {label} | {num(get(key, 'p50'), 3)} absolute | {num(get(key, 'p90'), 3)} absolute "
                f"| {num(get(key, 'p99'), 3)} absolute | {num(get(key, 'max_rps'))} | – | – | – | – | – | – |")
            continue
        if key not in RESULTS:
            continue
        cols = []
        for p in ("p50", "p90", "p99"):
            a = added(key, p)
            r = added(ref, p) if ref and ref != key else None
            cols.append(cell(a, r, 3))
        mx = get(key, "max_rps")
        mxs = num(mx)
        extra = []
        if isnum(mx) and isnum(direct_max):
            extra.append(f"{mx / direct_max * 100:.0f} %")
        if ref and ref != key and isnum(mx) and isnum(get(ref, "max_rps")):
            extra.append(ratio(mx, get(ref, "max_rps")))
        if extra:
            mxs += f" ({', '.join(extra)})"
        cols.append(mxs)
        cols.append(cell(get(key, "cpu_100k"), get(ref, "cpu_100k") if ref != key else None))
        for a, b in (("idle_a", "idle_b"), ("priv_a", "priv_b"), ("load_a", "load_b"), ("many_a", "many_b")):
            va, vb = get(key, a), get(key, b)
            if isinstance(va, str):
                cols.append(va)
            else:
                cols.append(f"{mib(va)} / {mib(vb)}")
        ka, kp = get(key, "kib_conn_a"), get(key, "kib_conn_pair")
        cols.append(f"{num(ka, 1)} ({num(kp, 1)})" if isnum(ka) else (ka or "–"))
        lines.append(f"| {label} | " + " | ".join(cols) + " |")
    return lines


def report(info, busy_before, busy_after, started, elapsed, others):
    L = []
    L.append("# Benchmark results")
    L.append("")
    L.append("Written by `python3 bench/bench.py` (see [README.md](README.md) for the method); "
             "regenerate with the same command. Every pair ran in this one run, on this machine, "
             "against the same backend.")
    L.append("")
    if QUICK:
        L.append("**Smoke run (BENCH_QUICK=1): 2 s phases, figures are indicative only.**")
        L.append("")
    L.append("## Machine")
    L.append("")
    L.append(f"- date: {info['date']} (run took {elapsed / 60:.1f} min)")
    L.append(f"- {info['nproc']} CPUs ({info['cpu']}), {info['mem']} memory, {info['kernel']}")
    L.append(f"- CPU busy with other work before the run: {busy_before * 100:.0f} % of all CPUs, "
             f"after: {busy_after * 100:.0f} % (measured over 2 s while nothing of the bench ran); "
             f"load average at start {started}")
    L.append(f"- CPU used by other work while the bench ran (the machine's busy time minus the "
             f"bench's own processes): {others * 100:.0f} % of all CPUs on average")
    if BACKGROUND:
        L.append("- other work while each pair ran: " + ", ".join(f"{k} {v * 100:.0f} %" for k, v in BACKGROUND))
    if max([busy_before, busy_after, others] + [v for _, v in BACKGROUND]) > 0.1:
        L.append("- **the machine was busy with other work during this run: figures are noisy and "
                 "lower than on an idle machine**")
    L.append(f"- trustmesh {info['trustmesh']}")
    L.append(f"- Envoy {info['envoy']}, {info['nginx']}, {info['haproxy']}, {info['wrk']}, {info['oha']}, "
             f"{info['curl']}, {info['openssl']}")
    L.append(f"- load generator, backend and both proxies of a pair share the {info['nproc']} CPUs; "
             "one worker per proxy (Envoy `--concurrency 1`, nginx `worker_processes 1`, "
             "HAProxy `nbthread 1`, trustmesh proxies' default `--workers 1`)")
    L.append("")

    # goals
    L.append("## trustmesh against its goals, Envoy and the direct baseline")
    L.append("")
    L.append("| figure | goal | trustmesh | Envoy (same mode) | trustmesh / Envoy | direct | met |")
    L.append("|---|---|---|---|---|---|---|")

    def goal(label, target, v, env, direct, ok, digits=2):
        met = "–"
        if isnum(v) and target != "–":
            met = "yes" if ok(v) else "**no**"
        L.append(f"| {label} | {target} | {num(v, digits)} | {num(env, digits)} | {ratio(v, env)} "
                 f"| {num(direct, digits)} | {met} |")

    goal("added p50 latency @1000 req/s, ms (L7)", "≤ 0.20", added("tm-http", "p50"), added("envoy-http", "p50"),
         get("tm-http", "direct_p50"), lambda v: v <= 0.20, 3)
    goal("max req/s, whole chain (L7)", "≥ 40k", get("tm-http", "max_rps"), get("envoy-http", "max_rps"),
         get("direct", "max_rps"), lambda v: v >= 40000)
    goal("CPU-s per 100k requests, pair (L7)", "≤ 2.5", get("tm-http", "cpu_100k"), get("envoy-http", "cpu_100k"),
         None, lambda v: v <= 2.5)

    def idle_max(k):
        a, b = get(k, "idle_a"), get(k, "idle_b")
        return max(a, b) / 1024 if isnum(a) and isnum(b) else (a if isinstance(a, str) else None)

    goal("idle RSS per proxy, MiB (larger of A, B)", "≤ 8", idle_max("tm-http"), idle_max("envoy-http"), None,
         lambda v: v <= 8, 1)

    def priv_max(k):
        a, b = get(k, "priv_a"), get(k, "priv_b")
        return max(a, b) / 1024 if isnum(a) and isnum(b) else (a if isinstance(a, str) else None)

    goal("idle private memory (USS) per proxy, MiB (larger of A, B)", "–", priv_max("tm-http"),
         priv_max("envoy-http"), None, None, 1)
    goal(f"KiB per open connection (client proxy A, {MANY_CONNS} conns)", "≤ 30", get("tm-http", "kib_conn_a"),
         get("envoy-http", "kib_conn_a"), None, lambda v: v <= 30, 1)
    goal("full-handshake mTLS connections/s, TCP (CONNECT tunnels)", "≥ 2,800", get("tm-tcpfull", "conns_s"),
         get("envoy-tcpfull", "conns_s"), get("direct", "conns_s"), lambda v: v >= 2800)
    goal("CPU ms per new connection, pair, TCP (CONNECT tunnels)", "≤ 0.6", get("tm-tcpfull", "cpu_ms_conn"),
         get("envoy-tcpfull", "cpu_ms_conn"), None, lambda v: v <= 0.6, 3)
    goal("full-handshake mTLS connections/s, HTTP (maxRequestsPerConnection: 1)", "≥ 2,800",
         get("tm-newconn", "conns_s"), get("envoy-tcpfull", "conns_s"), get("direct", "conns_s"),
         lambda v: v >= 2800)
    goal("CPU ms per new connection, pair, HTTP (maxRequestsPerConnection: 1)", "≤ 0.6",
         get("tm-newconn", "cpu_ms_conn"), get("envoy-tcpfull", "cpu_ms_conn"), None, lambda v: v <= 0.6, 3)
    goal("bulk TCP MB/s (L4)", "–", get("tm-tcp", "bulk_mbs"), get("envoy-tcp", "bulk_mbs"),
         get("direct", "bulk_mbs"), lambda v: True, 0)
    L.append("")
    L.append("Envoy (same mode): Envoy L7 for the request figures, Envoy L4 with resumption off for "
             "new connections, Envoy L4 for bulk.")
    L.append("")

    # requests
    L.append("## Requests: latency, throughput, CPU, memory")
    L.append("")
    L.append(f"Added latency = the pair's percentile minus the percentile of a direct run made just "
             f"before it with the same settings (so both see the same background load), at a fixed "
             f"{RATE} req/s on {LAT_CONNS} keep-alive connections (oha, latency-corrected); the direct "
             "row is the first direct run. Tail percentiles of 10 s runs on a shared 2-CPU machine "
             "are noisy: a negative added p99 means the direct run's tail was the worse one. "
             "In parentheses: the ratio to Envoy of the same mode (L7 rows to Envoy L7, L4 rows to "
             "Envoy L4); max req/s also as a share of direct. A = client-side proxy, B = server-side "
             f"proxy; KiB / conn = (RSS at {MANY_CONNS} connections − idle RSS) / {MANY_CONNS}, for A "
             "and (in parentheses) for A + B.")
    L.append("")
    rows = [("direct", "direct (no proxy)", None)]
    rows += [("tm-http", "**trustmesh** HTTP (pooled HTTP/2 mTLS, authz, metrics)", "envoy-http")]
    for k in ("envoy", "nginx", "haproxy"):
        rows.append((f"{k}-http", f"{PEER_NAMES[k]} L7", "envoy-http"))
    for k in ("envoy", "nginx", "haproxy"):
        rows.append((f"{k}-tcp", f"{PEER_NAMES[k]} L4", "envoy-tcp"))
    L += req_rows([r for r in rows if r[0] == "direct" or r[0] in RESULTS])
    L.append("")

    # new connections
    L.append("## New connections: one full mTLS 1.3 handshake per client connection")
    L.append("")
    L.append(f"`wrk -t1 -c{NEWCONN_CONNS} -H 'Connection: close'`: every request a new client "
             "connection, and behind it a new proxy-to-proxy mTLS connection with a full handshake "
             "(ECDSA P-256 both ways; trustmesh's proxies never resume sessions, the peers' L4 pairs "
             "here have resumption off). trustmesh, two ways: **TCP** — each connection sends "
             f"`CONNECT {TM_HOST}:{TM_TCP_PORT}` and the GET in one write (wrk Lua script), the "
             "client proxy opens one mTLS connection to the server proxy's `tcp-bulk` port per "
             "tunnel (the same L4 work as the peers' rows: handshake, authorization per connection, "
             "byte copy); **HTTP** — absolute-form GET to a service whose DestinationRule sets "
             "`maxRequestsPerConnection: 1`, so each request gets its own HTTP/2-over-mTLS connection "
             "(L7 on top: HTTP/2 setup, authorization per request, metrics). "
             "CPU ms = CPU of both proxies during the phase / connections. In parentheses: ratio to Envoy.")
    L.append("")
    L.append("| pair | connections/s | CPU ms per connection (pair) |")
    L.append("|---|---|---|")
    nrows = [("direct", "direct (no proxy, no TLS)"),
             ("tm-tcpfull", "**trustmesh** TCP (a CONNECT tunnel per connection)"),
             ("tm-newconn", "**trustmesh** HTTP, maxRequestsPerConnection: 1")]
    nrows += [(f"{k}-tcpfull", f"{PEER_NAMES[k]} L4, resumption off") for k in ("envoy", "nginx", "haproxy")]
    for key, label in nrows:
        if key not in RESULTS:
            continue
        ref = None if key in ("direct", "envoy-tcpfull") else "envoy-tcpfull"
        L.append(f"| {label} | {cell(get(key, 'conns_s'), get(ref, 'conns_s') if ref else None)} "
                 f"| {cell(get(key, 'cpu_ms_conn'), get(ref, 'cpu_ms_conn') if ref else None, 3)} |")
    L.append("")

    # bulk
    L.append("## Bulk TCP")
    L.append("")
    L.append(f"One {BULK_MIB} MiB download with curl through the L4 pair, best of {BULK_REPS}. trustmesh: "
             f"`curl -p -x {TM_PROXY}` (a CONNECT tunnel through the client proxy to the server's "
             f"`tcp-bulk` port {TM_TCP_PORT}, mTLS between the proxies, authorization per connection). "
             "In parentheses: share of direct, ratio to Envoy L4.")
    L.append("")
    L.append("| pair | MB/s | CPU-s per GiB (pair) |")
    L.append("|---|---|---|")
    d = get("direct", "bulk_mbs")
    for key, label in [("direct", "direct (no proxy)"), ("tm-tcp", "**trustmesh** TCP (CONNECT)")] + \
            [(f"{k}-tcp", f"{PEER_NAMES[k]} L4") for k in ("envoy", "nginx", "haproxy")]:
        if key not in RESULTS:
            continue
        v = get(key, "bulk_mbs")
        s = num(v, 0)
        if key != "direct" and isnum(v) and isnum(d):
            s += f" ({v / d * 100:.0f} %"
            s += f", {ratio(v, get('envoy-tcp', 'bulk_mbs'))})" if key != "envoy-tcp" else ")"
        c = get(key, "bulk_cpu_gib")
        L.append(f"| {label} | {s} | {cell(c, get('envoy-tcp', 'bulk_cpu_gib') if key != 'envoy-tcp' else None)} |")
    L.append("")

    if NOTES:
        L.append("## Errors and remarks")
        L.append("")
        for n in NOTES:
            L.append(f"- {n}")
        L.append("")

    L.append("## How each pair was run")
    L.append("")
    L.append("- backend: nginx, one worker, `bench/peers/backend-nginx.conf`, 1 KiB at `/1k`, "
             f"{BULK_MIB} MiB at `/bulk`, on 127.0.0.1:18080 (and :18081, the same server, for "
             "trustmesh's TCP port).")
    L.append("- trustmesh: the config folder `bench/trustmesh`, run as `trustmesh up` runs it (control "
             "plane, `token create` per workload, one `trustmesh proxy` per WorkloadEntry, with "
             f"`up`'s arguments) but with the control plane on {TM_CP} instead of `up`'s fixed "
             f"127.0.0.1:15012/15014; client proxy on "
             f"{TM_CLIENT}, server proxy on {TM_SERVER} whose app is the backend "
             "(`trustmesh.io/app-address: 127.0.0.1`); SVIDs from trustmesh's CA (ECDSA P-256, "
             "SPIFFE IDs), PeerAuthentication STRICT, deny by default plus an ALLOW for the "
             "client's principal (methods, paths, ports), metrics on. Load enters the client proxy's "
             f"outbound listener `{TM_PROXY}` as absolute-form requests: wrk with a Lua script "
             f"setting `wrk.path = \"http://{TM_HOST}:{TM_HTTP_PORT}{PATH_1K}\"`, oha with "
             f"`-x {TM_PROXY}` (oha sends absolute-form to an HTTP proxy for http:// URLs).")
    L.append("- Envoy: `bench/peers/envoy-*.yaml`, as Istio configures sidecars: TLS 1.3, ECDSA P-256 "
             "certificates with SPIFFE URI SANs, client certificate required, URI SAN matched both ways, "
             "network RBAC on the client's principal.")
    L.append("- nginx, HAProxy: `bench/peers/nginx-*.conf`, `haproxy-*.cfg`: TLS 1.3, client "
             "certificate required and verified against the CA; they verify the server's DNS SAN "
             "(no SPIFFE URI SAN matching), no RBAC.")
    L.append("- peers listen on 127.0.0.1:15001 (A, plaintext in) and 127.0.0.1:15443 (B, mTLS in); "
             "the load goes straight to A (origin-form), A forwards to B, B to the backend.")
    if TM_INFO.get("split"):
        parts = []
        for s, name in (("a", "client"), ("b", "server")):
            d = TM_INFO["split"][s]
            parts.append(f"{name} proxy {d.get('RssAnon', 0) / 1024:.1f} MiB anonymous + "
                         f"{d.get('RssFile', 0) / 1024:.1f} MiB file-backed (binary, libraries)")
        L.append("- trustmesh's idle RSS split: " + "; ".join(parts))
    if TM_INFO.get("cp_rss"):
        L.append(f"- trustmesh's control plane (not part of the pair's figures): {TM_INFO['cp_rss'] / 1024:.1f} MiB RSS")
    L.append("")
    L.append("## Commands")
    L.append("")
    L.append("As executed, in order (`bench/.run/conf/*` are `bench/peers/*` with the placeholders "
             "filled in).")
    L.append("")
    L.append("```")
    last = None
    for section, line in COMMANDS:
        if section != last:
            L.append(f"# {section}")
            last = section
        L.append(line)
    L.append("```")
    L.append("")
    scripts = sorted({w for _, line in COMMANDS for w in shlex.split(line) if w.endswith(".lua")})
    if scripts:
        L.append("The wrk Lua scripts:")
        L.append("")
        for path in scripts:
            L.append(f"`{path}`:")
            L.append("")
            L.append("```lua")
            with open(path) as f:
                L.append(f.read().rstrip())
            L.append("```")
            L.append("")
    return "\n".join(L)


def main():
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    atexit.register(stop_all)
    t0 = time.time()
    missing = [n for n, p in (("nginx", NGINX), ("wrk", WRK), ("oha", OHA), ("curl", CURL), ("openssl", OPENSSL))
               if not p]
    if missing:
        sys.exit(f"bench: missing {', '.join(missing)}: run bench/install-peers.sh (see bench/README.md)")
    os.makedirs(RUN, exist_ok=True)

    if "trustmesh" in PAIRS and os.environ.get("BENCH_BUILD", "1") != "0":
        SECTION[0] = "setup"
        print("building: cargo build --release -p trustmesh")
        record("run", ["cargo", "build", "--release", "-p", "trustmesh"])
        r = subprocess.run(["cargo", "build", "--release", "-p", "trustmesh"], cwd=ROOT)
        if r.returncode != 0:
            sys.exit("bench: cargo build failed")

    info = machine()
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    busy_before = busy_share()
    print(f"machine: {info['nproc']} CPUs ({info['cpu']}), {info['mem']}, {info['kernel']}; "
          f"busy with other work: {busy_before * 100:.0f} %, load {load}")
    print(f"trustmesh {info['trustmesh']}; envoy {info['envoy']}; {info['nginx']}; {info['haproxy']}; "
          f"{info['wrk']}; {info['oha']}")
    print(f"phases: latency {LATENCY_S:.0f}s, max {MAX_S:.0f}s, new connections {NEWCONN_S:.0f}s, "
          f"{MANY_CONNS} conns {MANY_S:.0f}s, bulk {BULK_MIB} MiB x{BULK_REPS}")

    snap0 = cpu_snapshot()
    setup()
    backend = start_backend()
    try:
        for p in PAIRS:
            if p == "direct":
                with background("direct"):
                    run_direct()
            elif p == "trustmesh":
                with background("trustmesh (all its modes)"):
                    run_trustmesh()
            elif p in PEER_FILES:
                run_peer(p)
            else:
                print(f"unknown pair {p!r} in BENCH_PAIRS (direct, trustmesh, envoy, nginx, haproxy)")
            if not backend.alive():
                raise SystemExit(f"the backend exited: {backend.log_tail()}")
    finally:
        backend.stop()
    snap1 = cpu_snapshot()
    others = others_share(snap0, snap1)
    print(f"other work used {others * 100:.0f} % of the CPUs while the bench ran")
    busy_after = busy_share()
    text = report(info, busy_before, busy_after, load, time.time() - t0, others)
    with open(OUT, "w") as f:
        f.write(text)
    print()
    print(text)
    print(f"written to {OUT}")


if __name__ == "__main__":
    main()
