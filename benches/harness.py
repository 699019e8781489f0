#!/usr/bin/env python3
"""Load harness: Isthmus against pingora's minimal proxy, nginx and haproxy,
configured equivalently, in one run.

All four terminate mTLS (client certificate required and verified against the
same CA, same ECDSA P-256 server certificate), route two Host names to the same
upstream with keep-alive, answer 404 for anything else, and log nothing. oha
drives each scenario; systems alternate within every repetition and the medians
are reported. Loopback only. Run through `benches/run`.

Modes (any combination; none given = --saturation; --all = every mode):
  --saturation  oha as fast as it goes, per scenario (req/s, latency, CPU, RSS)
  --fixed-rate  oha at a fixed rate: CPU cores used and latency at that rate
  --counts      fixed request count: syscalls, TLS records, upstream connections
                and wake-ups per request
  --memory      RSS growth per idle mTLS keep-alive connection (10,000 of them)
  --egress      the calling side: egress -> remote gateway -> upstream, Isthmus
                against the same two-hop mTLS chain built of nginx
"""

import argparse
import datetime
import http.client
import json
import os
import pathlib
import platform
import resource
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benches" / "results"
SYSTEMS = ["isthmus", "pingora", "nginx", "haproxy"]
PORTS = {"isthmus": 14143, "pingora": 44143, "nginx": 24143, "haproxy": 34143}
ADMIN_PORT = 14191
PROBE_PORT = 14192
UPSTREAM_PORT = 18080
RELAY_PORT = 19443
HOSTS = ["a.bench.svc.cluster.local", "b.bench.svc.cluster.local"]
# Connection capacity of the configs (nginx worker_connections, haproxy maxconn,
# Isthmus limits); the memory mode needs room for 10,000 idle connections.
MAX_CONNS = 4096
MEMORY_MAX_CONNS = 20000

# name, oha arguments, path. Connection counts follow the scenarios.
SCENARIOS = [
    ("h1 keep-alive, 64 conns", ["-c", "64", "--http-version", "1.1"], "/"),
    ("h2, 8 conns x 8 streams", ["-c", "8", "-p", "8", "--http2"], "/"),
    ("new mTLS conn per request", ["-c", "8", "--disable-keepalive", "--http-version", "1.1"], "/"),
    ("h1 10 KiB, 32 conns", ["-c", "32", "--http-version", "1.1"], "/10k"),
    ("h1 1 MiB, 8 conns", ["-c", "8", "--http-version", "1.1"], "/1m"),
]
# What users pay in production: a rate well below saturation. Latency is
# corrected for coordinated omission (measured from each request's scheduled
# start), so a system that falls behind the rate shows it in p99.
FIXED_RATE = [
    ("h1 20,000 req/s, 64 conns", ["-c", "64", "--http-version", "1.1", "-q", "20000", "--latency-correction"], "/"),
    ("h2 10,000 req/s, 8 conns x 8 streams", ["-c", "8", "-p", "8", "--http2", "-q", "10000", "--latency-correction"], "/"),
]
# The counters' scenarios: the issue's three keep-alive ones.
COUNT_SCENARIOS = [SCENARIOS[0], SCENARIOS[1], SCENARIOS[3]]

# The calling side (issue 12): plaintext into the egress, mTLS between the hops.
EGRESS_HOST = "up-east.bench.svc.cluster.local"
EGRESS_PORTS = {"isthmus": {"h1": 14140, "h2": 14140}, "nginx": {"h1": 24140, "h2": 24141}}
WEST_PORTS = {"gateway": 15143, "admin": 15191, "probe": 15192}
EGRESS_SCENARIOS = [
    ("egress h1 keep-alive, 64 conns", "h1", ["-c", "64", "--http-version", "1.1"]),
    ("egress h2c, 8 conns x 8 streams", "h2", ["-c", "8", "-p", "8", "--http2"]),
]
GATEWAY_IDENTITY = "spiffe://east.example/ns/isthmus/sa/isthmus-gateway"


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- configs

def service_manifest(name, port):
    return f"""\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: bench, labels: {{mirror.linkerd.io/exported: "true"}}}}
spec: {{ports: [{{name: http, port: 80, targetPort: http}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: bench, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints: [{{addresses: ["127.0.0.1"]}}]
"""


def isthmus_config(d, certs, max_conns):
    (d / "manifests").mkdir(parents=True, exist_ok=True)
    for host in HOSTS:
        name = host.split(".")[0]
        (d / "manifests" / f"{name}.yaml").write_text(service_manifest(name, UPSTREAM_PORT))
    (d / "isthmus.yaml").write_text(f"""\
listen: {{gateway: "127.0.0.1:{PORTS['isthmus']}", admin: "127.0.0.1:{ADMIN_PORT}", probe: "127.0.0.1:{PROBE_PORT}", egress: null}}
tls:
  cert: {certs}/gateway.crt
  key: {certs}/gateway.key
  trust_anchors: {certs}/ca.crt
  session_resumption: false
allowed_identities: ["*"]
discovery: {{files: manifests}}
threads: {os.cpu_count()}
limits: {{max_connections: {max_conns}, max_connections_per_identity: {max_conns}}}
""")


def nginx_config(d, certs, max_conns, fd_limit):
    server_blocks = "\n".join(f"""
    server {{
        listen 127.0.0.1:{PORTS['nginx']} ssl http2;
        server_name {host};
        location / {{
            proxy_pass http://upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}""" for host in HOSTS)
    (d / "nginx.conf").write_text(f"""\
{nginx_main(d, max_conns, fd_limit, "nginx")}
http {{
{nginx_http_common(d)}
    ssl_certificate {certs}/gateway.crt;
    ssl_certificate_key {certs}/gateway.key;
    ssl_client_certificate {certs}/ca.crt;
    ssl_verify_client on;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    http2_max_requests 1000000;
    upstream upstream {{
        server 127.0.0.1:{UPSTREAM_PORT};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{PORTS['nginx']} ssl http2 default_server;
        server_name _;
        return 404;
    }}{server_blocks}
}}
""")


def nginx_main(d, max_conns, fd_limit, name):
    return f"""\
worker_processes {os.cpu_count()};
worker_rlimit_nofile {min(2 * max_conns + 1024, fd_limit)};
pid {d}/{name}.pid;
error_log {d}/{name}-error.log warn;
events {{ worker_connections {max_conns}; }}"""


def nginx_http_common(d):
    (d / "nginx-tmp").mkdir(exist_ok=True)
    temp = "\n".join(f"    {k}_temp_path {d}/nginx-tmp;" for k in
                     ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"])
    return f"""\
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    proxy_buffering on;
{temp}"""


def haproxy_config(d, certs, max_conns, fd_limit):
    (d / "gateway.pem").write_text((certs / "gateway.crt").read_text() + (certs / "gateway.key").read_text())
    (d / "haproxy.cfg").write_text(f"""\
global
    nbthread {os.cpu_count()}
    tune.ssl.cachesize 0
    ssl-default-bind-options no-tls-tickets
    maxconn {max_conns}
    # haproxy wants 2 descriptors per connection (and refuses to start without
    # them); 10,000 idle connections need only one each.
    ulimit-n {fd_limit}
    no strict-limits

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option http-keep-alive

frontend gw
    bind 127.0.0.1:{PORTS['haproxy']} ssl crt {d}/gateway.pem ca-file {certs}/ca.crt verify required alpn h2,http/1.1
    acl known_host req.hdr(host),field(1,:) -i {" ".join(HOSTS)}
    use_backend upstream if known_host
    default_backend not_found

backend not_found
    http-request return status 404

backend upstream
    http-reuse always
    server up 127.0.0.1:{UPSTREAM_PORT} maxconn 1000
""")


def write_configs(d, certs, fd_limit, max_conns=MAX_CONNS):
    d.mkdir(parents=True, exist_ok=True)
    isthmus_config(d, certs, max_conns)
    nginx_config(d, certs, max_conns, fd_limit)
    haproxy_config(d, certs, max_conns, fd_limit)


def egress_configs(d, certs, fd_limit):
    """West's side of the two-hop chains: an Isthmus whose egress reaches the
    ingress Isthmus through a mirror Service (as `isthmus mirror` writes it),
    and an nginx egress that proxies to the ingress nginx over mTLS."""
    (d / "manifests").mkdir(parents=True, exist_ok=True)
    mirror_meta = f"""\
  labels:
    mirror.linkerd.io/mirrored-service: "true"
    mirror.linkerd.io/cluster-name: east
  annotations:
    mirror.linkerd.io/remote-svc-fq-name: {HOSTS[0]}
    mirror.linkerd.io/remote-gateway-identity: {GATEWAY_IDENTITY}"""
    name = EGRESS_HOST.split(".")[0]
    (d / "manifests" / "mirror.yaml").write_text(f"""\
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: bench
{mirror_meta}
spec:
  ports: [{{name: http, port: 80}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  namespace: bench
{mirror_meta.replace('  labels:', '  labels:' + chr(10) + f'    kubernetes.io/service-name: {name}' + chr(10) + '    endpointslice.kubernetes.io/managed-by: isthmus.dev/mirror')}
addressType: IPv4
ports: [{{name: http, port: {PORTS['isthmus']}}}]
endpoints: [{{addresses: ["127.0.0.1"], conditions: {{ready: true}}}}]
""")
    w = WEST_PORTS
    (d / "isthmus-west.yaml").write_text(f"""\
listen: {{gateway: "127.0.0.1:{w['gateway']}", admin: "127.0.0.1:{w['admin']}", probe: "127.0.0.1:{w['probe']}", egress: "127.0.0.1:{EGRESS_PORTS['isthmus']['h1']}"}}
tls:
  cert: {certs}/peer-west.crt
  key: {certs}/peer-west.key
  trust_anchors: {certs}/ca.crt
allowed_identities: ["spiffe://east.example/*"]
discovery: {{files: manifests}}
threads: {os.cpu_count()}
""")
    p = EGRESS_PORTS["nginx"]
    (d / "nginx-egress.conf").write_text(f"""\
{nginx_main(d, MAX_CONNS, fd_limit, "nginx-egress")}
http {{
{nginx_http_common(d)}
    upstream ingress {{
        server 127.0.0.1:{PORTS['nginx']};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{p['h1']} default_server;
        listen 127.0.0.1:{p['h2']} http2 default_server;
        server_name _;
        return 404;
    }}
    server {{
        listen 127.0.0.1:{p['h1']};
        listen 127.0.0.1:{p['h2']} http2;
        server_name {EGRESS_HOST};
        http2_max_requests 1000000;
        location / {{
            proxy_pass https://ingress;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host {HOSTS[0]};
            proxy_ssl_certificate {certs}/peer-west.crt;
            proxy_ssl_certificate_key {certs}/peer-west.key;
            proxy_ssl_trusted_certificate {certs}/ca.crt;
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
        }}
    }}
}}
""")


# ---------------------------------------------------------------- processes

class Proc:
    """A process group under test, with CPU, RSS and context-switch accounting."""

    def __init__(self, name, argv, cwd, env=None, stdin=None, stdout=None):
        self.name = name
        self.log = open(cwd / f"{name}.log", "w")
        self.p = subprocess.Popen([str(a) for a in argv], cwd=cwd, stdin=stdin,
                                  stdout=stdout or self.log, stderr=self.log,
                                  start_new_session=True, env=env)

    def pids(self):
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                stat = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == self.p.pid:  # pgrp
                out.append(int(d))
        return out

    def cpu_seconds(self):
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.pids():
            try:
                fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
            except OSError:
                pass
        return total / ticks

    def _status_sum(self, paths, key):
        total = 0
        for path in paths:
            try:
                for line in open(path):
                    if line.startswith(key):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total

    def rss_bytes(self):
        return self._status_sum([f"/proc/{p}/status" for p in self.pids()], "VmRSS:") * 1024

    def context_switches(self):
        """(voluntary, involuntary) summed over every thread: a voluntary switch
        is a thread going to sleep to wait, i.e. one wake-up later."""
        tasks = [f"/proc/{p}/task/{t}/status" for p in self.pids()
                 for t in _listdir(f"/proc/{p}/task")]
        return (self._status_sum(tasks, "voluntary_ctxt_switches:"),
                self._status_sum(tasks, "nonvoluntary_ctxt_switches:"))

    def signal(self, sig):
        try:
            os.killpg(self.p.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self):
        self.signal(signal.SIGTERM)
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.p.wait()
        self.log.close()


def _listdir(path):
    try:
        return os.listdir(path)
    except OSError:
        return []


def client_ctx(certs):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(certs / "peer-west.crt", certs / "peer-west.key")
    return ctx


def get(port, host, path="/", certs=None):
    """One request; HTTPS with the peer certificate when `certs` is given."""
    if certs:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=client_ctx(certs), timeout=5)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path, headers={"Host": host})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body


def wait_until(check, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def system_argv(name, d, certs, bins):
    return {
        "isthmus": [bins / "isthmus", "run", "--config", d / "isthmus.yaml"],
        "pingora": [bins / "pingora-baseline", f"127.0.0.1:{PORTS['pingora']}", f"127.0.0.1:{UPSTREAM_PORT}",
                    certs / "gateway.crt", certs / "gateway.key", certs / "ca.crt", os.cpu_count(), *HOSTS],
        "nginx": ["nginx", "-c", d / "nginx.conf", "-p", d, "-g", "daemon off;"],
        "haproxy": ["haproxy", "-db", "-f", d / "haproxy.cfg"],
    }[name]


def start_system(name, d, certs, bins):
    env = dict(os.environ, RUST_LOG="warn,isthmus::access=off")
    p = Proc(name, system_argv(name, d, certs, bins), d, env)
    port = PORTS[name]
    wait_until(lambda: get(port, HOSTS[0], certs=certs)[0] == 200, f"{name} to serve")
    # Equivalence check: both routes answer from the upstream, anything else is 404.
    for h in HOSTS:
        status, body = get(port, h, certs=certs)
        assert status == 200 and body == b"hello, world\n", (name, h, status, body)
    status, _ = get(port, "unknown.bench.svc.cluster.local", certs=certs)
    assert status == 404, (name, status)
    return p


def start_upstream(work, bins):
    up = Proc("upstream", [bins / "bench-upstream", f"127.0.0.1:{UPSTREAM_PORT}", "1"], work)
    wait_until(lambda: socket.create_connection(("127.0.0.1", UPSTREAM_PORT), 1).close() is None, "upstream")
    return up


def upstream_stats():
    return json.loads(get(UPSTREAM_PORT, "stats", "/stats")[1])


def raise_fd_limit():
    """10,000 idle connections need more descriptors than the usual 1,024;
    children (the systems, idle-conns) inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (65536, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            return want
        except (ValueError, OSError):
            continue
    return soft


# ---------------------------------------------------------------- load

def run_oha(oha, port, args, path, limit, certs=None, host=HOSTS[0]):
    """One oha run to `host` (through 127.0.0.1:`port`). `limit` is oha's
    `-z 6s` or `-n 20000`. HTTPS with the peer certificate when `certs` is
    given, else plaintext (the egress)."""
    scheme = ["--insecure", "--cert", str(certs / "peer-west.crt"), "--key", str(certs / "peer-west.key")] if certs else []
    argv = [str(oha), "--no-tui", "--output-format", "json", *limit, *scheme,
            # The authority names the Service port (80), as a mirror Service's
            # callers do; the TCP connection goes to the system under test.
            "--connect-to", f"{host}:80:127.0.0.1:{port}",
            *args, f"{'https' if certs else 'http'}://{host}:80{path}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"oha failed: {' '.join(argv)}\n{out.stderr}")
    return json.loads(out.stdout)


def oha_summary(res, seconds):
    summary = res.get("summary", {})
    wall = summary.get("total") or seconds
    codes = {int(k): v for k, v in res.get("statusCodeDistribution", {}).items()}
    ok = sum(v for k, v in codes.items() if 200 <= k < 300)
    # Requests cut off by oha's deadline are not failures of the system under test.
    errors = sum(v for k, v in res.get("errorDistribution", {}).items() if "deadline" not in k)
    errors += sum(v for k, v in codes.items() if not 200 <= k < 300)
    pct = res.get("latencyPercentiles", {})
    ms = lambda k: (pct.get(k) or 0) * 1000
    return {"wall_s": wall, "ok": ok, "errors": errors, "rps": ok / wall if wall else 0,
            "p50_ms": ms("p50"), "p99_ms": ms("p99"), "p999_ms": ms("p99.9")}


class PeakRss:
    """Samples the summed RSS of `procs` every 200 ms while in the `with` block."""

    def __init__(self, procs):
        self.procs, self.peak, self.done = procs, 0, threading.Event()

    def __enter__(self):
        def sample():
            while not self.done.is_set():
                self.peak = max(self.peak, sum(p.rss_bytes() for p in self.procs))
                self.done.wait(0.2)
        self.t = threading.Thread(target=sample, daemon=True)
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.t.join()


def measure(procs, upstream, run):
    """One oha run (`run()` returns its JSON) against the chain `procs`.
    Besides the systems' own numbers, records the CPU the load generator and
    the upstream spent per request: the machine's cores are shared, so that
    sets a ceiling on what any gateway can reach."""
    cpu0 = sum(p.cpu_seconds() for p in procs)
    up0, oha0 = upstream.cpu_seconds(), children_cpu_seconds()
    with PeakRss(procs) as rss:
        res = run()
    cpu = sum(p.cpu_seconds() for p in procs) - cpu0
    load_cpu = upstream.cpu_seconds() - up0 + children_cpu_seconds() - oha0
    m = oha_summary(res, None)
    ok = m["ok"]
    m.update({
        "cpu_s_per_10k": cpu / ok * 10_000 if ok else None,
        "cpu_cores": cpu / m["wall_s"] if m["wall_s"] else None,
        "peak_rss_mib": rss.peak / 2**20,
        "load_cpu_us_per_req": load_cpu / ok * 1e6 if ok else None,
    })
    return m


def children_cpu_seconds():
    """CPU used by finished child processes (the oha runs) so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def median(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def ratio(a, b):
    return a / b if a and b else None


KEYS = ["rps", "p50_ms", "p99_ms", "p999_ms", "errors", "cpu_s_per_10k", "cpu_cores", "peak_rss_mib",
        "load_cpu_us_per_req"]


def rotate(items, rep):
    k = rep % len(items)
    return items[k:] + items[:k]


def repeated(ctx, scenarios, systems, one_run, label):
    """Every scenario for every system in each repetition, in rotating order;
    medians per scenario and system, with the runs kept."""
    runs = {sc[0]: {s: [] for s in systems} for sc in scenarios}
    for rep in range(ctx.args.reps):
        for sc in scenarios:
            for s in rotate(systems, rep):
                m = one_run(sc, s)
                runs[sc[0]][s].append(m)
                log(f"{label} rep {rep + 1} {sc[0]:<36} {s:<8} {m['rps']:>9,.0f} req/s  "
                    f"p99 {m['p99_ms']:.2f} ms  errors {m['errors']}")
    out = []
    for sc in scenarios:
        systems_out = {s: {**{k: median(runs[sc[0]][s], k) for k in KEYS}, "runs": runs[sc[0]][s]} for s in systems}
        out.append({"name": sc[0], "systems": systems_out})
    return out


def comparisons(systems, base, others, key):
    return {f"{key}_vs_{o}": ratio(systems[base][key], systems[o][key]) for o in others}


# ---------------------------------------------------------------- modes

def saturation(ctx, scenarios):
    def one(sc, s):
        name, args, path = sc
        run_oha(ctx.oha, PORTS[s], args, path, ["-z", "1s"], ctx.certs)  # warm-up
        return measure([ctx.procs[s]], ctx.upstream,
                       lambda: run_oha(ctx.oha, PORTS[s], args, path, ["-z", f"{ctx.args.seconds}s"], ctx.certs))
    out = repeated(ctx, scenarios, SYSTEMS, one, "saturation")
    for sc in out:
        s = sc["systems"]
        sc["ratios"] = {k: v for key in ("rps", "p99_ms", "cpu_s_per_10k")
                        for k, v in comparisons(s, "isthmus", ["pingora", "nginx", "haproxy"], key).items()}
        sc["ceiling"] = ceiling(s["nginx"], os.cpu_count())
    return out


def fixed_rate(ctx):
    def one(sc, s):
        name, args, path = sc
        run_oha(ctx.oha, PORTS[s], [a for a in args if a != "--latency-correction"], path, ["-z", "1s"], ctx.certs)
        return measure([ctx.procs[s]], ctx.upstream,
                       lambda: run_oha(ctx.oha, PORTS[s], args, path, ["-z", f"{ctx.args.seconds}s"], ctx.certs))
    out = repeated(ctx, FIXED_RATE, SYSTEMS, one, "fixed-rate")
    for sc in out:
        s = sc["systems"]
        sc["ratios"] = {k: v for key in ("cpu_cores", "p99_ms", "p999_ms")
                        for k, v in comparisons(s, "isthmus", ["pingora", "nginx", "haproxy"], key).items()}
    return out


def ceiling(nginx, cores):
    """What no gateway can beat here: oha and the upstream share the cores, so
    even a gateway that used no CPU at all would top out at cores divided by
    their CPU per request (taken from nginx's runs)."""
    load = nginx.get("load_cpu_us_per_req")
    if not load:
        return None
    rps = cores * 1e6 / load
    return {"load_cpu_us_per_req": load, "rps_if_gateway_free": rps, "vs_nginx": ratio(rps, nginx["rps"])}


# -- counts

def strace_start(proc, out):
    """`strace -c -f` attached to every process of `proc` (with -f, each with
    all its threads: one "attached" line per process); returns once attached."""
    pids = proc.pids()
    argv = ["strace", "-c", "-f", "-o", str(out)] + [a for p in pids for a in ("-p", str(p))]
    st = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, start_new_session=True)
    attached = 0
    while attached < len(pids):
        line = st.stderr.readline()
        if not line:
            break
        attached += "attached" in line
    threading.Thread(target=st.stderr.read, daemon=True).start()  # drain
    return st


def strace_stop(st, out):
    st.send_signal(signal.SIGINT)
    st.wait(timeout=60)
    return parse_strace(out.read_text())


def parse_strace(text):
    """`strace -c` table → {syscall: calls}."""
    calls = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) < 5 or not f[0][0].isdigit() or f[-1] == "total":
            continue
        try:
            calls[f[-1]] = calls.get(f[-1], 0) + int(f[3])
        except ValueError:
            continue
    return calls


def clean_counts(ctx, s, args, path, n):
    """Without tracing: CPU, wake-ups and upstream connections per request,
    for the system and its neighbours (oha and the upstream)."""
    proc, up = ctx.procs[s], ctx.upstream
    before = (proc.cpu_seconds(), proc.context_switches(), up.cpu_seconds(), up.context_switches(),
              children_cpu_seconds(), upstream_stats())
    res = run_oha(ctx.oha, PORTS[s], args, path, ["-n", str(n)], ctx.certs)
    after = (proc.cpu_seconds(), proc.context_switches(), up.cpu_seconds(), up.context_switches(),
             children_cpu_seconds(), upstream_stats())
    ok = oha_summary(res, None)["ok"] or 1
    per = lambda a, b: (a - b) / ok
    return {
        "requests": ok,
        "proxy_cpu_us": per(after[0], before[0]) * 1e6,
        "proxy_wakeups": per(after[1][0], before[1][0]),
        "proxy_involuntary": per(after[1][1], before[1][1]),
        "upstream_cpu_us": per(after[2], before[2]) * 1e6,
        "upstream_wakeups": per(after[3][0], before[3][0]),
        "oha_cpu_us": per(after[4], before[4]) * 1e6,
        # The second /stats request's own connection is not the system's.
        "upstream_connections": after[5]["accepts"] - before[5]["accepts"] - 1,
        "upstream_requests_per_request": per(after[5]["requests"], before[5]["requests"]),
    }


def record_counts(ctx, s, args, path, n):
    """Through the TLS record counter (benches/src/bin/tls-records.rs)."""
    relay = subprocess.Popen([str(ctx.bins / "tls-records"), f"127.0.0.1:{RELAY_PORT}", f"127.0.0.1:{PORTS[s]}"],
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    wait_until(lambda: socket.create_connection(("127.0.0.1", RELAY_PORT), 1).close() is None, "tls-records")
    time.sleep(0.2)  # the probe connection above is counted; let it settle
    res = run_oha(ctx.oha, RELAY_PORT, args, path, ["-n", str(n)], ctx.certs)
    relay.send_signal(signal.SIGTERM)
    totals = json.loads(relay.communicate(timeout=30)[0])
    ok = oha_summary(res, None)["ok"] or 1
    down, up = totals["server_to_client"], totals["client_to_server"]
    return {
        "records_down": down["application_data"] / ok,
        "records_up": up["application_data"] / ok,
        "relay_reads_down": down["reads"] / ok,
        "bytes_down": down["bytes"] / ok,
    }


def syscall_counts(ctx, s, args, path, n):
    proc_out, up_out = ctx.work / f"strace-{s}.txt", ctx.work / f"strace-{s}-upstream.txt"
    st_proc = strace_start(ctx.procs[s], proc_out)
    st_up = strace_start(ctx.upstream, up_out)
    res = run_oha(ctx.oha, PORTS[s], args, path, ["-n", str(n)], ctx.certs)
    calls, up_calls = strace_stop(st_proc, proc_out), strace_stop(st_up, up_out)
    ok = oha_summary(res, None)["ok"] or 1
    return {"syscalls": {k: v / ok for k, v in calls.items()},
            "upstream_syscalls": {k: v / ok for k, v in up_calls.items()}}


def counts(ctx):
    n = ctx.args.count
    out = []
    for name, args, path in COUNT_SCENARIOS:
        systems = {}
        for s in SYSTEMS:
            run_oha(ctx.oha, PORTS[s], args, path, ["-z", "1s"], ctx.certs)  # warm-up
            m = clean_counts(ctx, s, args, path, n)
            m.update(record_counts(ctx, s, args, path, n))
            m.update(syscall_counts(ctx, s, args, path, n))
            systems[s] = m
            log(f"counts {name:<28} {s:<8} syscalls/req {sum(m['syscalls'].values()):.2f}  "
                f"records down/req {m['records_down']:.2f}  upstream conns {m['upstream_connections']}  "
                f"wake-ups/req {m['proxy_wakeups']:.2f}")
        out.append({"name": name, "requests": n, "systems": systems})
    return out


# -- memory

def memory(ctx):
    """Each system alone, freshly started with room for the connections: RSS
    before, with N idle connections, and after they closed. Growth per
    connection = (with - before) / N. Twice per system, each time freshly
    started: with one request done on each connection, and after the TLS
    handshake only (what the HTTP state adds is the difference)."""
    d = ctx.work / "memory"
    write_configs(d, ctx.certs, ctx.fd_limit, MEMORY_MAX_CONNS)
    n = ctx.args.idle_conns
    out = {"connections": n, "systems": {}}
    for s in SYSTEMS:
        m = idle_rss(ctx, s, d, n, requests=1)
        m["kib_per_conn_handshake_only"] = idle_rss(ctx, s, d, n, requests=0)["kib_per_conn"]
        out["systems"][s] = m
        log(f"memory {s:<8} {m['held']} conns: {m['rss_before_mib']:.1f} -> {m['rss_with_mib']:.1f} MiB "
            f"({m['kib_per_conn'] or 0:.1f} KiB/conn; handshake only {m['kib_per_conn_handshake_only'] or 0:.1f}), "
            f"after close {m['rss_after_close_mib']:.1f} MiB")
    return out


def idle_rss(ctx, s, d, n, requests):
    proc = start_system(s, d, ctx.certs, ctx.bins)
    try:
        hold_idle(ctx, s, d, 200, 1)  # warm-up: threads, pools and first-use allocations
        time.sleep(1)
        before = proc.rss_bytes()
        held, during = hold_idle(ctx, s, d, n, requests, proc.rss_bytes)
        time.sleep(2)
        after = proc.rss_bytes()
    finally:
        proc.stop()
    return {"held": held, "rss_before_mib": before / 2**20, "rss_with_mib": during / 2**20,
            "rss_after_close_mib": after / 2**20,
            "kib_per_conn": (during - before) / held / 1024 if held else None}


def hold_idle(ctx, s, d, n, requests, sample=None):
    """Opens `n` idle connections with idle-conns (`requests` 1: one request
    on each, 0: handshake only); returns (held, sample()) taken while they
    are open."""
    argv = [ctx.bins / "idle-conns", f"127.0.0.1:{PORTS[s]}", HOSTS[0], ctx.certs / "peer-west.crt",
            ctx.certs / "peer-west.key", ctx.certs / "ca.crt", n, 32, requests]
    p = Proc(f"idle-conns-{s}", argv, d, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    line = p.p.stdout.readline().decode()
    held = int(line.split()[1]) if line.startswith("ready") else 0
    time.sleep(1)
    value = sample() if sample else None
    p.p.stdin.close()
    p.p.wait(timeout=60)
    p.log.close()
    return held, value


# -- egress

def egress(ctx):
    """The two-hop chains; the ingress systems (Isthmus, nginx) are the ones
    already running. CPU is the sum over both hops."""
    d = ctx.work / "egress"
    egress_configs(d, ctx.certs, ctx.fd_limit)
    env = dict(os.environ, RUST_LOG="warn,isthmus::access=off")
    chains = {
        "isthmus": [Proc("isthmus-west", [ctx.bins / "isthmus", "run", "--config", d / "isthmus-west.yaml"], d, env),
                    ctx.procs["isthmus"]],
        "nginx": [Proc("nginx-egress", ["nginx", "-c", d / "nginx-egress.conf", "-p", d, "-g", "daemon off;"], d),
                  ctx.procs["nginx"]],
    }
    try:
        for s in chains:
            port = EGRESS_PORTS[s]["h1"]
            wait_until(lambda: get(port, EGRESS_HOST)[0] == 200, f"{s} egress to serve")
            status, body = get(port, EGRESS_HOST)
            assert status == 200 and body == b"hello, world\n", (s, status, body)
        scenarios = [(name, args, proto) for name, proto, args in EGRESS_SCENARIOS]

        def one(sc, s):
            name, args, proto = sc
            port = EGRESS_PORTS[s][proto]
            run_oha(ctx.oha, port, args, "/", ["-z", "1s"], host=EGRESS_HOST)
            return measure(chains[s], ctx.upstream,
                           lambda: run_oha(ctx.oha, port, args, "/", ["-z", f"{ctx.args.seconds}s"], host=EGRESS_HOST))
        out = repeated(ctx, scenarios, list(chains), one, "egress")
    finally:
        chains["isthmus"][0].stop()
        chains["nginx"][0].stop()
    for sc in out:
        s = sc["systems"]
        sc["ratios"] = {k: v for key in ("rps", "p99_ms", "cpu_s_per_10k")
                        for k, v in comparisons(s, "isthmus", ["nginx"], key).items()}
    return out


# ---------------------------------------------------------------- report

def fmt(v, d=1):
    return "-" if v is None else f"{v:,.{d}f}"


def table(header, rows):
    """A markdown table; text columns (the first, and "system"/"chain"/"syscall") left-aligned."""
    text = {0} | {i for i, h in enumerate(header) if h in ("system", "chain", "syscall")}
    lines = ["| " + " | ".join(header) + " |",
             "|" + "".join("---|" if i in text else "---:|" for i in range(len(header)))]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def md_saturation(sat):
    rows = [[sc["name"], s, fmt(m["rps"], 0), fmt(m["p50_ms"], 2), fmt(m["p99_ms"], 2), fmt(m["p999_ms"], 2),
             fmt(m["errors"], 0), fmt(m["cpu_s_per_10k"], 3), fmt(m["peak_rss_mib"])]
            for sc in sat for s, m in sc["systems"].items()]
    lines = ["### Saturation", ""]
    lines += table(["scenario", "system", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "CPU s / 10k req",
                    "peak RSS MiB"], rows)
    lines += ["", "Isthmus against each (req/s and p99: Isthmus / other; CPU per request: Isthmus / other). "
              "The pingora column is what Isthmus adds to its engine.", ""]
    others = ["pingora", "nginx", "haproxy"]
    rows = [[sc["name"]] + [fmt(sc["ratios"].get(f"{k}_vs_{o}"), 2) for k in ("rps", "p99_ms", "cpu_s_per_10k")
                            for o in others] for sc in sat]
    lines += table(["scenario"] + [f"{k} / {o}" for k in ("req/s", "p99", "CPU/req") for o in others], rows)
    lines += ["", "Ceiling: oha and the upstream run on the same cores. Their CPU per request (in nginx's runs) "
              "bounds what any gateway could reach here, even one that used no CPU at all.", ""]
    rows = [[sc["name"], fmt((sc.get("ceiling") or {}).get("load_cpu_us_per_req")),
             fmt((sc.get("ceiling") or {}).get("rps_if_gateway_free"), 0), fmt((sc.get("ceiling") or {}).get("vs_nginx"), 2)]
            for sc in sat]
    lines += table(["scenario", "oha + upstream CPU µs / req", "req/s with a free gateway", "that / nginx's req/s"], rows)
    return lines


def md_fixed_rate(fr):
    lines = ["### Fixed rate", "", "oha at a fixed rate (`-q`, latency corrected for coordinated omission); "
             "CPU cores = the system's CPU seconds / wall seconds.", ""]
    rows = [[sc["name"], s, fmt(m["rps"], 0), fmt(m["cpu_cores"], 3), fmt(m["p50_ms"], 2), fmt(m["p99_ms"], 2),
             fmt(m["p999_ms"], 2), fmt(m["errors"], 0)] for sc in fr for s, m in sc["systems"].items()]
    lines += table(["scenario", "system", "achieved req/s", "CPU cores", "p50 ms", "p99 ms", "p99.9 ms", "errors"], rows)
    lines += [""]
    others = ["pingora", "nginx", "haproxy"]
    rows = [[sc["name"]] + [fmt(sc["ratios"].get(f"{k}_vs_{o}"), 2) for k in ("cpu_cores", "p99_ms") for o in others]
            for sc in fr]
    lines += table(["scenario"] + [f"{k} Isthmus / {o}" for k in ("CPU", "p99") for o in others], rows)
    return lines


def md_counts(cn):
    lines = ["### Per-request counters", "",
             "Fixed request counts, three runs per system: untraced (CPU from `/proc`, wake-ups = voluntary "
             "context switches summed over threads, upstream connections accepted by bench-upstream), through "
             "`tls-records` (a relay that parses TLS record headers, application-data records counted), and "
             "under `strace -c -f` (syscalls, also the upstream's).", ""]
    rows = []
    for sc in cn:
        for s, m in sc["systems"].items():
            rows.append([sc["name"], s, fmt(sum(m["syscalls"].values()), 2), fmt(m["records_down"], 2),
                         fmt(m["records_up"], 2), fmt(m["proxy_wakeups"], 2), fmt(m["upstream_connections"], 0),
                         fmt(sum(m["upstream_syscalls"].values()), 2), fmt(m["upstream_wakeups"], 2),
                         fmt(m["proxy_cpu_us"]), fmt(m["oha_cpu_us"]), fmt(m["upstream_cpu_us"])])
    lines += table(["scenario", "system", "syscalls", "TLS records to client", "TLS records from client",
                    "wake-ups", f"upstream conns opened (of {cn[0]['requests']:,} req)" if cn else "upstream conns",
                    "upstream syscalls", "upstream wake-ups", "proxy CPU µs", "oha CPU µs", "upstream CPU µs"], rows)
    lines += ["", "Syscalls per request by name (≥ 0.05 per request in some system):", ""]
    for sc in cn:
        names = sorted({k for m in sc["systems"].values() for k, v in m["syscalls"].items() if v >= 0.05},
                       key=lambda k: -max(m["syscalls"].get(k, 0) for m in sc["systems"].values()))
        rows = [[sc["name"], k] + [fmt(m["syscalls"].get(k, 0), 2) for m in sc["systems"].values()] for k in names]
        lines += table(["scenario", "syscall"] + list(sc["systems"]), rows) + [""]
    return lines[:-1]


def md_memory(mem):
    lines = ["### Memory per connection", "", f"{mem['connections']:,} idle mTLS keep-alive connections "
             "(one HTTP/1.1 request done on each), each system alone and freshly started; RSS summed over "
             "its processes.", ""]
    rows = [[s, fmt(m["held"], 0), fmt(m["rss_before_mib"]), fmt(m["rss_with_mib"]), fmt(m["rss_after_close_mib"]),
             fmt(m["kib_per_conn"]), fmt(m.get("kib_per_conn_handshake_only"))] for s, m in mem["systems"].items()]
    return lines + table(["system", "connections held", "RSS before MiB", "RSS with them MiB",
                          "RSS after close MiB", "KiB / connection", "KiB / connection, handshake only"], rows)


def md_egress(eg):
    lines = ["### Egress chain", "", "Caller → egress (plaintext) → mTLS → ingress → upstream, both hops on "
             "this machine; CPU summed over both hops. Isthmus: egress → Isthmus gateway; nginx: "
             "`proxy_ssl_certificate` egress → `ssl_verify_client on` ingress.", ""]
    rows = [[sc["name"], s, fmt(m["rps"], 0), fmt(m["p50_ms"], 2), fmt(m["p99_ms"], 2), fmt(m["p999_ms"], 2),
             fmt(m["errors"], 0), fmt(m["cpu_s_per_10k"], 3)] for sc in eg for s, m in sc["systems"].items()]
    lines += table(["scenario", "chain", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "CPU s / 10k req"], rows)
    lines += [""]
    rows = [[sc["name"], fmt(sc["ratios"]["rps_vs_nginx"], 2), fmt(sc["ratios"]["p99_ms_vs_nginx"], 2),
             fmt(sc["ratios"]["cpu_s_per_10k_vs_nginx"], 2)] for sc in eg]
    return lines + table(["scenario", "req/s Isthmus / nginx", "p99 Isthmus / nginx", "CPU/req Isthmus / nginx"], rows)


RENDER = {"saturation": md_saturation, "fixed_rate": md_fixed_rate, "counts": md_counts, "memory": md_memory,
          "egress": md_egress}


def markdown(report):
    lines = []
    for mode, render in RENDER.items():
        r = report["modes"].get(mode)
        if r:
            lines += [f"{r['meta']}", ""] + render(r["result"]) + [""]
    return "\n".join(lines)


def update_readme(text_md):
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        readme.write_text(f"{head}{start}\n{text_md}{end}{tail}")


def version(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except (OSError, IndexError):
        return "?"


def meta(args, mode):
    what = {
        "saturation": f"{args.reps} repetitions of {args.seconds} s per system and scenario, medians",
        "fixed_rate": f"{args.reps} repetitions of {args.seconds} s per system and scenario, medians",
        "counts": f"{args.count:,} requests per system, scenario and counter",
        "memory": f"{args.idle_conns:,} connections per system",
        "egress": f"{args.reps} repetitions of {args.seconds} s per chain and scenario, medians",
    }[mode]
    return (f"Run {datetime.date.today().isoformat()} on {os.cpu_count()} cores "
            f"({platform.processor() or platform.machine()}), {what}; {version([args.oha, '--version'])}, "
            f"{version(['nginx', '-v'])}, {version(['haproxy', '-v']).split(' - ')[0]}.")


# ---------------------------------------------------------------- main

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bins = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--oha", required=True)
    ap.add_argument("--bins", default=str(bins), help="folder of the release binaries (default: $CARGO_TARGET_DIR/release)")
    ap.add_argument("--only", help="comma-separated saturation scenario indexes (0-based), for quick runs")
    for mode in ("saturation", "fixed-rate", "counts", "memory", "egress", "all"):
        ap.add_argument(f"--{mode}", action="store_true")
    ap.add_argument("--count", type=int, default=20000, help="requests per counter run (--counts)")
    ap.add_argument("--idle-conns", type=int, default=10000, help="idle connections (--memory)")
    ap.add_argument("--dev", action="store_true",
                    help="development run: results stay in benches/results/raw/, nothing published")
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()
    modes = [m for m in RENDER if args.all or getattr(args, m)]
    args.modes = modes or ["saturation"]
    return args


class Ctx:
    """What every mode needs: arguments, binaries, certificates, the running systems."""

    def __init__(self, args, work):
        self.args, self.work = args, work
        self.oha, self.bins, self.certs = args.oha, pathlib.Path(args.bins), work / "certs"
        self.procs, self.upstream = {}, None


def run_modes(ctx):
    scenarios = [SCENARIOS[int(i)] for i in ctx.args.only.split(",")] if ctx.args.only else SCENARIOS
    steps = {"saturation": lambda: saturation(ctx, scenarios), "fixed_rate": lambda: fixed_rate(ctx),
             "counts": lambda: counts(ctx), "memory": lambda: memory(ctx), "egress": lambda: egress(ctx)}
    results = {}
    shared = [m for m in ctx.args.modes if m != "memory"]
    if shared:
        for s in SYSTEMS:
            ctx.procs[s] = start_system(s, ctx.work, ctx.certs, ctx.bins)
            log(f"{s} up (pid {ctx.procs[s].p.pid}), routes equivalent")
    try:
        for mode in shared:
            started = time.time()
            results[mode] = {"meta": meta(ctx.args, mode), "result": steps[mode]()}
            log(f"{mode} done in {time.time() - started:.0f} s")
    finally:
        for p in ctx.procs.values():
            p.stop()
    if "memory" in ctx.args.modes:
        started = time.time()
        results["memory"] = {"meta": meta(ctx.args, "memory"), "result": memory(ctx)}
        log(f"memory done in {time.time() - started:.0f} s")
    return results


def publish(results, work, args):
    """Raw: always, in the run's folder. Published (benches/results/latest.*
    and the README): full runs only; modes not run keep their last results."""
    report = {"modes": results}
    (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (work / "report.md").write_text(markdown(report))
    if args.dev or args.only:
        return markdown(report)
    latest = RESULTS / "latest.json"
    try:
        old = json.loads(latest.read_text()).get("modes", {})
    except (OSError, ValueError):
        old = {}
    report = {"modes": {**old, **results}}
    text_md = markdown(report)
    latest.write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(text_md)
    if not args.no_readme:
        update_readme(text_md)
    return text_md


def main():
    args = parse_args()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    work = RESULTS / "raw" / stamp
    work.mkdir(parents=True)
    ctx = Ctx(args, work)
    ctx.fd_limit = raise_fd_limit()
    log(f"modes {', '.join(args.modes)}; raw results in {work}; fd limit {ctx.fd_limit}")
    subprocess.run([ctx.bins / "isthmus", "certs", "dev", ctx.certs], check=True, capture_output=True)
    write_configs(work, ctx.certs, ctx.fd_limit)
    ctx.upstream = start_upstream(work, ctx.bins)
    started = time.time()
    try:
        results = run_modes(ctx)
    finally:
        ctx.upstream.stop()
    log(f"all modes done in {time.time() - started:.0f} s")
    print(publish(results, work, args))


if __name__ == "__main__":
    main()
