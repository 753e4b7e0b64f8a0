"""A real kube-apiserver for the start-up bench: etcd and kube-apiserver from `KUBEBUILDER_ASSETS`
(`bash ../shared/envtest/setup.sh` prints it), started as `tests/envtest/mod.rs` starts them
(token auth with an admin in `system:masters`, TLS with a self-signed certificate), and the
synthetic cluster's Services and EndpointSlices created in it through the API.

The API server is started and loaded once per run and stays up across the rounds, as a cluster's
does while a node restarts switchboard: its watch cache is warm. etcd keeps its data in a tmpfs
(`/dev/shm` where there is one), so loading is not bound by the disk's fsync.
"""

import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import yaml

import benchlib as B

TOKEN = "switchboard-bench-admin-token"


class Unavailable(Exception):
    """No kube-apiserver here: the reason, for the table."""


def assets():
    d = os.environ.get("KUBEBUILDER_ASSETS", "")
    if not d:
        raise Unavailable("KUBEBUILDER_ASSETS is not set "
                          "(bash ../shared/envtest/setup.sh prints it)")
    for b in ("etcd", "kube-apiserver"):
        if not (Path(d) / b).exists():
            raise Unavailable(f"KUBEBUILDER_ASSETS={d} has no {b}")
    return Path(d)


def version(a):
    out = subprocess.run([a / "kube-apiserver", "--version"], capture_output=True, text=True)
    etcd = subprocess.run([a / "etcd", "--version"], capture_output=True, text=True)
    first = (etcd.stdout.splitlines() or [""])[0].replace("etcd Version: ", "etcd ")
    return f"{out.stdout.strip()}, {first}"


class KubeApiserver:
    """etcd + kube-apiserver on free loopback ports; `stop()` ends both and removes their files."""

    def __init__(self, wd):
        a = assets()
        self.version = version(a)
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.dir = Path(tempfile.mkdtemp(prefix="sb-kube-", dir=base))
        d = self.dir
        cp, pp, self.port = (B.free_port(socket.SOCK_STREAM) for _ in range(3))
        curl, purl = f"http://127.0.0.1:{cp}", f"http://127.0.0.1:{pp}"
        self.etcd = B.Proc("etcd", [
            a / "etcd", "--data-dir", d / "etcd", "--listen-client-urls", curl,
            "--advertise-client-urls", curl, "--listen-peer-urls", purl,
            "--initial-advertise-peer-urls", purl, "--initial-cluster", f"default={purl}",
        ], wd / "etcd.log")
        B.wait_for(lambda: _get_ok(f"127.0.0.1:{cp}", "/health"), 20, "etcd healthy", self.etcd)
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout",
                        "-out", d / "sa.key"], check=True, capture_output=True)
        subprocess.run(["openssl", "ec", "-in", d / "sa.key", "-pubout", "-out", d / "sa.pub"],
                       check=True, capture_output=True)
        (d / "tokens.csv").write_text(f'{TOKEN},admin,admin-uid,"system:masters"\n')
        self.apiserver = B.Proc("kube-apiserver", [
            a / "kube-apiserver", "--etcd-servers", curl, "--bind-address", "127.0.0.1",
            "--secure-port", self.port, "--cert-dir", d / "certs",
            # bench-gen's ClusterIPs are in 10.96.0.0/12.
            "--service-cluster-ip-range", "10.96.0.0/12", "--authorization-mode", "RBAC",
            "--token-auth-file", d / "tokens.csv",
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-account-key-file", d / "sa.pub",
            "--service-account-signing-key-file", d / "sa.key",
            "--endpoint-reconciler-type", "none",
        ], wd / "kube-apiserver.log")
        B.wait_for(lambda: self.request("GET", "/readyz")[0] == 200, 60,
                   "kube-apiserver ready", self.apiserver)

    def kubeconfig(self, path):
        Path(path).write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: bench
  cluster:
    server: https://127.0.0.1:{self.port}
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: {TOKEN}
contexts:
- name: bench
  context: {{cluster: bench, user: admin}}
current-context: bench
""")
        return path

    def connection(self):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=30)

    def request(self, method, path, body=None, conn=None):
        own = conn is None
        conn = conn or self.connection()
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None,
                         headers={"Authorization": f"Bearer {TOKEN}",
                                  "Content-Type": "application/json"})
            r = conn.getresponse()
            return r.status, r.read()
        except OSError:
            return 0, b""
        finally:
            if own:
                conn.close()

    def count(self, path):
        status, body = self.request("GET", f"{path}?limit=1")
        if status != 200:
            return 0
        meta = json.loads(body)["metadata"]
        return len(json.loads(body)["items"]) + int(meta.get("remainingItemCount") or 0)

    def load(self, manifests, threads=8):
        """Creates every namespace, Service and EndpointSlice of the manifest files (one POST
        each, `threads` connections); objects that exist already are left as they are. Returns
        (objects created, seconds)."""
        objs = []
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        for f in sorted(Path(manifests).glob("*.yaml")):
            objs += [o for o in yaml.load_all(f.read_text(), Loader=loader) if o]
        t0 = time.monotonic()
        for ns in sorted({o["metadata"]["namespace"] for o in objs}):
            self.request("POST", "/api/v1/namespaces",
                         {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        created = [0]
        failed = []
        lock = threading.Lock()
        it = iter(objs)

        def work():
            conn = self.connection()
            while True:
                with lock:
                    o = next(it, None)
                if o is None:
                    break
                ns = o["metadata"]["namespace"]
                path = (f"/api/v1/namespaces/{ns}/services" if o["kind"] == "Service" else
                        f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices")
                status, body = self.request("POST", path, o, conn)
                if status == 0:
                    conn.close()
                    conn = self.connection()
                    status, body = self.request("POST", path, o, conn)
                with lock:
                    if status == 201:
                        created[0] += 1
                    elif status != 409:
                        failed.append(f"{status} {body[:200]!r}")
            conn.close()

        ts = [threading.Thread(target=work) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if failed:
            raise RuntimeError(f"{len(failed)} objects not created, e.g. {failed[0]}")
        return created[0], time.monotonic() - t0

    def cpu_s(self):
        return (B.proc_ticks(self.apiserver.pid) + B.proc_ticks(self.etcd.pid)) / B.TICK

    def stop(self):
        self.apiserver.stop()
        self.etcd.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _get_ok(addr, path):
    host, port = addr.split(":")
    try:
        c = http.client.HTTPConnection(host, int(port), timeout=2)
        c.request("GET", path)
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except OSError:
        return False
