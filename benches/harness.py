#!/usr/bin/env python3
"""Load harness: Isthmus against nginx and haproxy, configured equivalently, in one run.

All three terminate mTLS (client certificate required and verified against the same
CA, same ECDSA P-256 server certificate, session resumption off), route two Host
names to the same upstream with keep-alive, answer 404 for anything else, and log
nothing. oha drives each scenario; systems alternate within every repetition and
the medians are reported. Loopback only. Run through `benches/run`.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import resource
import signal
import ssl
import statistics
import subprocess
import sys
import threading
import time
import http.client

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benches" / "results"
PORTS = {"isthmus": 14143, "nginx": 24143, "haproxy": 34143}
ADMIN_PORT = 14191
UPSTREAM_PORT = 18080
HOSTS = ["a.bench.svc.cluster.local", "b.bench.svc.cluster.local"]
SYSTEMS = ["isthmus", "nginx", "haproxy"]

# name, oha arguments, path. Connection counts follow the scenarios.
SCENARIOS = [
    ("h1 keep-alive, 64 conns", ["-c", "64", "--http-version", "1.1"], "/"),
    ("h2, 8 conns x 8 streams", ["-c", "8", "-p", "8", "--http2"], "/"),
    ("new mTLS conn per request", ["-c", "8", "--disable-keepalive", "--http-version", "1.1"], "/"),
    ("h1 10 KiB, 32 conns", ["-c", "32", "--http-version", "1.1"], "/10k"),
    ("h1 1 MiB, 8 conns", ["-c", "8", "--http-version", "1.1"], "/1m"),
]


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- configs

def write_configs(work, certs):
    (work / "manifests").mkdir(parents=True, exist_ok=True)
    for i, host in enumerate(HOSTS):
        name = host.split(".")[0]
        (work / "manifests" / f"{name}.yaml").write_text(f"""\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: bench, labels: {{mirror.linkerd.io/exported: "true"}}}}
spec: {{ports: [{{name: http, port: 80, targetPort: http}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: bench, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: {UPSTREAM_PORT}}}]
endpoints: [{{addresses: ["127.0.0.1"]}}]
""")
    (work / "isthmus.yaml").write_text(f"""\
listen: {{gateway: "127.0.0.1:{PORTS['isthmus']}", admin: "127.0.0.1:{ADMIN_PORT}"}}
tls:
  cert: {certs}/gateway.crt
  key: {certs}/gateway.key
  trust_anchors: {certs}/ca.crt
  session_resumption: false
allowed_identities: ["*"]
discovery: {{files: manifests}}
threads: {os.cpu_count()}
""")
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
    (work / "nginx.conf").write_text(f"""\
worker_processes {os.cpu_count()};
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    ssl_certificate {certs}/gateway.crt;
    ssl_certificate_key {certs}/gateway.key;
    ssl_client_certificate {certs}/ca.crt;
    ssl_verify_client on;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    http2_max_requests 1000000;
    client_body_temp_path {work}/nginx-tmp;
    proxy_temp_path {work}/nginx-tmp;
    fastcgi_temp_path {work}/nginx-tmp;
    uwsgi_temp_path {work}/nginx-tmp;
    scgi_temp_path {work}/nginx-tmp;
    proxy_buffering on;
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
    (work / "nginx-tmp").mkdir(exist_ok=True)
    (work / "gateway.pem").write_text((certs / "gateway.crt").read_text() + (certs / "gateway.key").read_text())
    (work / "haproxy.cfg").write_text(f"""\
global
    nbthread {os.cpu_count()}
    tune.ssl.cachesize 0
    ssl-default-bind-options no-tls-tickets
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option http-keep-alive

frontend gw
    bind 127.0.0.1:{PORTS['haproxy']} ssl crt {work}/gateway.pem ca-file {certs}/ca.crt verify required alpn h2,http/1.1
    acl known_host req.hdr(host),field(1,:) -i {" ".join(HOSTS)}
    use_backend upstream if known_host
    default_backend not_found

backend not_found
    http-request return status 404

backend upstream
    http-reuse always
    server up 127.0.0.1:{UPSTREAM_PORT} maxconn 1000
""")


# ---------------------------------------------------------------- processes

class Proc:
    """A system under test in its own process group, with CPU and RSS accounting."""

    def __init__(self, name, argv, cwd, env=None):
        self.name = name
        self.log = open(cwd / f"{name}.log", "w")
        self.p = subprocess.Popen(argv, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT,
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

    def rss_bytes(self):
        total = 0
        for pid in self.pids():
            try:
                for line in open(f"/proc/{pid}/status"):
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                pass
        return total

    def stop(self):
        try:
            os.killpg(self.p.pid, signal.SIGTERM)
            self.p.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()


def https_get(port, host, certs, path="/"):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(certs / "peer-west.crt", certs / "peer-west.key")
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
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
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def start_system(name, work, certs, isthmus_bin):
    if name == "isthmus":
        env = dict(os.environ, RUST_LOG="warn,isthmus::access=off")
        p = Proc(name, [str(isthmus_bin), "run", "--config", str(work / "isthmus.yaml")], work, env)
    elif name == "nginx":
        p = Proc(name, ["nginx", "-c", str(work / "nginx.conf"), "-p", str(work), "-g", "daemon off;"], work)
    else:
        p = Proc(name, ["haproxy", "-db", "-f", str(work / "haproxy.cfg")], work)
    wait_until(lambda: https_get(PORTS[name], HOSTS[0], certs)[0] == 200, f"{name} to serve")
    # Equivalence check: both routes answer from the upstream, anything else is 404.
    for h in HOSTS:
        status, body = https_get(PORTS[name], h, certs)
        assert status == 200 and body == b"hello, world\n", (name, h, status, body)
    status, _ = https_get(PORTS[name], "unknown.bench.svc.cluster.local", certs)
    assert status == 404, (name, status)
    return p


# ---------------------------------------------------------------- load

def run_oha(oha, certs, port, args, path, seconds):
    argv = [str(oha), "--no-tui", "--output-format", "json", "-z", f"{seconds}s", "--insecure",
            "--cert", str(certs / "peer-west.crt"), "--key", str(certs / "peer-west.key"),
            # The authority names the Service port (80), as a mirror Service's
            # callers do; the TCP connection goes to the system under test.
            "--connect-to", f"{HOSTS[0]}:80:127.0.0.1:{port}",
            *args, f"https://{HOSTS[0]}:80{path}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise SystemExit(f"oha failed: {' '.join(argv)}\n{out.stderr}")
    return json.loads(out.stdout)


def measure(proc, upstream, oha, certs, scenario, seconds):
    """One oha run against `proc`. Besides the system's own numbers, records the
    CPU the load generator and the upstream spent per request: the machine's
    cores are shared, so that sets a ceiling on what any gateway can reach."""
    name, args, path = scenario
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.rss_bytes())
            done.wait(0.2)

    t = threading.Thread(target=sample, daemon=True)
    cpu0, up0, oha0 = proc.cpu_seconds(), upstream.cpu_seconds(), children_cpu_seconds()
    t.start()
    res = run_oha(oha, certs, PORTS[proc.name], args, path, seconds)
    done.set()
    t.join()
    cpu = proc.cpu_seconds() - cpu0
    load_cpu = upstream.cpu_seconds() - up0 + children_cpu_seconds() - oha0
    summary = res.get("summary", {})
    wall = summary.get("total") or seconds
    codes = {int(k): v for k, v in res.get("statusCodeDistribution", {}).items()}
    ok = sum(v for k, v in codes.items() if 200 <= k < 300)
    # Requests cut off by oha's deadline are not failures of the system under test.
    errors = sum(v for k, v in res.get("errorDistribution", {}).items() if "deadline" not in k)
    errors += sum(v for k, v in codes.items() if not 200 <= k < 300)
    pct = res.get("latencyPercentiles", {})
    ms = lambda k: (pct.get(k) or 0) * 1000
    return {
        "rps": ok / wall,
        "ok": ok,
        "errors": errors,
        "p50_ms": ms("p50"),
        "p99_ms": ms("p99"),
        "p999_ms": ms("p99.9"),
        "cpu_s_per_10k": cpu / ok * 10_000 if ok else None,
        "peak_rss_mib": peak[0] / 2**20,
        "load_cpu_us_per_req": load_cpu / ok * 1e6 if ok else None,
    }


def children_cpu_seconds():
    """CPU used by finished child processes (the oha runs) so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def median(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


# ---------------------------------------------------------------- report

def ratio(a, b):
    return a / b if a and b else None


def markdown(report):
    lines = [
        f"Run {report['date']} on {report['machine']['cores']} cores ({report['machine']['cpu']}), "
        f"{report['reps']} repetitions of {report['seconds']} s per system and scenario, medians; "
        f"{report['oha']}, nginx {report['versions']['nginx']}, haproxy {report['versions']['haproxy']}. "
        "req/s counts 2xx responses over wall time.",
        "",
        "| scenario | system | req/s | p50 ms | p99 ms | p99.9 ms | errors | CPU s / 10k req | peak RSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    fmt = lambda v, d=1: "-" if v is None else f"{v:,.{d}f}"
    for sc in report["scenarios"]:
        for system in SYSTEMS:
            m = sc["systems"][system]
            lines.append(f"| {sc['name']} | {system} | {fmt(m['rps'], 0)} | {fmt(m['p50_ms'], 2)} | {fmt(m['p99_ms'], 2)} | "
                         f"{fmt(m['p999_ms'], 2)} | {fmt(m['errors'], 0)} | {fmt(m['cpu_s_per_10k'], 3)} | {fmt(m['peak_rss_mib'])} |")
    lines += ["", "| scenario | req/s Isthmus/nginx | req/s Isthmus/haproxy | p99 Isthmus/nginx | p99 Isthmus/haproxy | CPU/req Isthmus/nginx | CPU/req Isthmus/haproxy |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for sc in report["scenarios"]:
        r = sc["ratios"]
        lines.append(f"| {sc['name']} | {fmt(r['rps_vs_nginx'], 2)} | {fmt(r['rps_vs_haproxy'], 2)} | {fmt(r['p99_vs_nginx'], 2)} | "
                     f"{fmt(r['p99_vs_haproxy'], 2)} | {fmt(r['cpu_vs_nginx'], 2)} | {fmt(r['cpu_vs_haproxy'], 2)} |")
    lines += ["", "Ceiling: oha and the upstream run on the same cores. Their CPU per request (in nginx's runs) bounds "
              "what any gateway could reach here, even one that used no CPU at all.", "",
              "| scenario | oha + upstream CPU µs / req | req/s with a free gateway | that / nginx's req/s |",
              "|---|---:|---:|---:|"]
    for sc in report["scenarios"]:
        c = sc.get("ceiling") or {}
        lines.append(f"| {sc['name']} | {fmt(c.get('load_cpu_us_per_req'))} | {fmt(c.get('rps_if_gateway_free'), 0)} | "
                     f"{fmt(c.get('vs_nginx'), 2)} |")
    return "\n".join(lines) + "\n"


def ceiling(nginx, cores):
    """What no gateway can beat here: oha and the upstream share the cores, so
    even a gateway that used no CPU at all would top out at cores divided by
    their CPU per request (taken from nginx's runs)."""
    load = nginx.get("load_cpu_us_per_req")
    if not load:
        return None
    rps = cores * 1e6 / load
    return {"load_cpu_us_per_req": load, "rps_if_gateway_free": rps, "vs_nginx": ratio(rps, nginx["rps"])}


def update_readme(table):
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        readme.write_text(f"{head}{start}\n{table}{end}{tail}")


def version(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except (OSError, IndexError):
        return "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--oha", required=True)
    ap.add_argument("--isthmus", default=str(ROOT / "target/release/isthmus"))
    ap.add_argument("--upstream", default=str(ROOT / "target/release/bench-upstream"))
    ap.add_argument("--only", help="comma-separated scenario indexes (0-based), for quick runs")
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()
    scenarios = SCENARIOS
    if args.only:
        scenarios = [SCENARIOS[int(i)] for i in args.only.split(",")]

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    work = RESULTS / "raw" / stamp
    certs = work / "certs"
    work.mkdir(parents=True)
    subprocess.run([args.isthmus, "certs", "dev", str(certs)], check=True, capture_output=True)
    write_configs(work, certs)
    upstream = Proc("upstream", [args.upstream, f"127.0.0.1:{UPSTREAM_PORT}", "1"], work)
    procs = {}
    try:
        wait_until(lambda: __import__("socket").create_connection(("127.0.0.1", UPSTREAM_PORT), 1).close() is None, "upstream")
        for s in SYSTEMS:
            procs[s] = start_system(s, work, certs, args.isthmus)
            log(f"{s} up (pid {procs[s].p.pid}), routes equivalent")
        runs = {sc[0]: {s: [] for s in SYSTEMS} for sc in scenarios}
        for rep in range(args.reps):
            for sc in scenarios:
                order = SYSTEMS[rep % 3:] + SYSTEMS[:rep % 3]
                for s in order:
                    run_oha(args.oha, certs, PORTS[s], sc[1], sc[2], 1)  # warm-up
                    m = measure(procs[s], upstream, args.oha, certs, sc, args.seconds)
                    runs[sc[0]][s].append(m)
                    log(f"rep {rep + 1} {sc[0]:<28} {s:<8} {m['rps']:>9,.0f} req/s  p99 {m['p99_ms']:.2f} ms  errors {m['errors']}")
    finally:
        for p in procs.values():
            p.stop()
        upstream.stop()

    report = {
        "date": datetime.date.today().isoformat(),
        "machine": {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                    "kernel": platform.release()},
        "seconds": args.seconds,
        "reps": args.reps,
        "oha": version([args.oha, "--version"]),
        "versions": {"nginx": version(["nginx", "-v"]), "haproxy": version(["haproxy", "-v"])},
        "scenarios": [],
    }
    for sc in scenarios:
        systems = {}
        for s in SYSTEMS:
            keys = ["rps", "p50_ms", "p99_ms", "p999_ms", "errors", "cpu_s_per_10k", "peak_rss_mib",
                    "load_cpu_us_per_req"]
            systems[s] = {k: median(runs[sc[0]][s], k) for k in keys}
            systems[s]["runs"] = runs[sc[0]][s]
        i, n, h = systems["isthmus"], systems["nginx"], systems["haproxy"]
        report["scenarios"].append({
            "name": sc[0],
            "systems": systems,
            "ratios": {
                "rps_vs_nginx": ratio(i["rps"], n["rps"]), "rps_vs_haproxy": ratio(i["rps"], h["rps"]),
                "p99_vs_nginx": ratio(i["p99_ms"], n["p99_ms"]), "p99_vs_haproxy": ratio(i["p99_ms"], h["p99_ms"]),
                "cpu_vs_nginx": ratio(i["cpu_s_per_10k"], n["cpu_s_per_10k"]),
                "cpu_vs_haproxy": ratio(i["cpu_s_per_10k"], h["cpu_s_per_10k"]),
            },
            "ceiling": ceiling(n, os.cpu_count()),
        })
    table = markdown(report)
    # Subset runs (--only) are for quick comparisons: they stay in the raw folder.
    out = work if args.only else RESULTS
    (out / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "latest.md").write_text(table)
    if not args.no_readme and not args.only:
        update_readme(table)
    print(table)


if __name__ == "__main__":
    main()
