"""Starting a federation's processes: the command lines, TLS material, and a one-machine launcher.

The same command lines serve three uses: `nightingale federate superlink|site|submit` on separate
hosts (the coordinator's, each site's), and `LocalFederation`, which runs them all on one machine
(the example and the tests):

    with LocalFederation(run_dir, sites, tls=True) as fed:
        fed.start_superlink(); [fed.start_site(n) for n in sites]
        status = fed.wait(fed.submit(cfg), timeout=1800)

Ports: the SuperLink's Fleet API (sites connect), ServerAppIo (its ServerApp) and Control API
(`flwr run`); each SuperNode's ClientAppIo. Every process writes a log under <run_dir>/flower/logs/.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nightingale.atomic import atomic_file, write_json_atomic
from nightingale.federated.config import FederationConfig
from nightingale.federated.coordinator import STATUS_FILE
from nightingale.federated.site import Site
from nightingale.ports import free_port

log = logging.getLogger(__name__)
APP_DIR = Path(__file__).resolve().parent / "flower" / "app"
CONNECTION = "nightingale"


def flower_bin(name: str) -> str:
    """A Flower executable of this environment (they start each other by bare name, so the
    environment's bin folder must also be on PATH: see `process_env`)."""
    return str(Path(sys.executable).parent / name)


def process_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


@dataclass(frozen=True)
class Tls:
    """TLS material: the CA certificate sites and `flwr` trust, the coordinator's certificate and
    key. None of it is a secret but the key."""

    ca: Path
    cert: Path
    key: Path


def make_certificates(out: str | Path, hosts: list[str], days: int = 365) -> Tls:
    """A private CA and a server certificate for `hosts` (names or IP addresses), PEM files in
    `out`. For tests and small deployments; an organisation's own PKI serves as well."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Nightingale federation CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA384()))
    key = ec.generate_private_key(ec.SECP384R1())
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca_key, hashes.SHA384()))
    tls = Tls(out / "ca.crt", out / "server.pem", out / "server.key")
    tls.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    with atomic_file(tls.key) as tmp:
        tmp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
        tmp.chmod(0o600)
    return tls


# --- command lines ------------------------------------------------------------------------------
def superlink_command(*, fleet: str, serverappio: str, control: str, tls: Tls | None, database: Path | None,
                      supernode_auth: bool = False) -> list[str]:
    """The SuperLink's command line. `database`: its state on disk, so that a restarted SuperLink
    still knows the connected sites (in memory, a restart makes every SuperNode give up)."""
    cmd = [flower_bin("flower-superlink"), "--fleet-api-address", fleet, "--serverappio-api-address", serverappio,
           "--control-api-address", control, "--disable-runtime-dependency-installation"]
    if database is not None:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        cmd += ["--database", str(Path(database).resolve())]
    if tls is None:
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key)]
    if supernode_auth:
        cmd.append("--enable-supernode-auth")
    return cmd


def supernode_command(site: Site, *, superlink: str, clientappio: str, root_ca: Path | None,
                      auth_key: Path | None = None, wire_log: Path | None = None,
                      require_secagg: bool = False) -> list[str]:
    node_config = f'site-name="{site.name}" data-dir="{site.data_dir.resolve()}" work-dir="{site.work_dir.resolve()}"'
    if require_secagg:
        node_config += " require-secagg=true"
    if wire_log is not None:
        node_config += f' wire-log="{Path(wire_log).resolve()}"'
    cmd = [flower_bin("flower-supernode"), "--superlink", superlink, "--clientappio-api-address", clientappio,
           "--node-config", node_config]
    cmd += ["--insecure"] if root_ca is None else ["--root-certificates", str(Path(root_ca).resolve())]
    if auth_key is not None:
        cmd += ["--auth-supernode-private-key", str(Path(auth_key).resolve())]
    return cmd


def write_cli_home(home: Path, control: str, root_ca: Path | None) -> Path:
    """The `flwr` command's config (FLWR_HOME/config.toml) naming the coordinator's Control API."""
    home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]", f'address = "{control}"']
    lines.append("insecure = true" if root_ca is None else f'root-certificates = "{Path(root_ca).resolve()}"')
    with atomic_file(home / "config.toml") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return home


def write_run_config(path: Path, run_dir: Path, cfg: FederationConfig, sites: int, node_wait_s: float) -> Path:
    import tomli_w

    with atomic_file(path) as tmp:
        tmp.write_text(tomli_w.dumps({"run-dir": str(Path(run_dir).resolve()), "federation": json.dumps(cfg.to_dict()),
                                      "sites": int(sites), "node-wait-s": float(node_wait_s)}))
    return path


def flwr(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cp = subprocess.run([flower_bin("flwr"), *args], env=process_env(FLWR_HOME=str(home)),
                        capture_output=True, text=True)
    if check and cp.returncode != 0:
        raise RuntimeError(f"flwr {' '.join(args[:2])} failed ({cp.returncode}): {cp.stdout[-2000:]} {cp.stderr[-2000:]}")
    return cp


def submit(home: Path, run_config: Path) -> int:
    """Submit the federation's Flower App; returns the run id."""
    cp = flwr(home, "run", str(APP_DIR), CONNECTION, "--run-config", str(run_config), "--format", "json")
    return int(json.loads(cp.stdout)["run-id"])


def run_status(home: Path, run_id: int) -> str | None:
    cp = flwr(home, "ls", CONNECTION, "--run-id", str(run_id), "--format", "json", check=False)
    try:
        return str(json.loads(cp.stdout)["runs"][0]["status"])
    except (ValueError, KeyError, IndexError):
        return None


def _coordinator_state(status_file: Path) -> str | None:
    try:
        return str(json.loads(status_file.read_text()).get("status"))
    except (OSError, ValueError):
        return None


def wait_for_run(home: Path, run_id: int, run_dir: Path, timeout: float, poll_s: float = 0.5,
                 ask_every_s: float = 10.0) -> dict[str, Any]:
    """Poll until the run ends; the coordinator's status.json, with Flower's verdict added.
    status.json is read every `poll_s`; Flower is asked (`flwr ls`, a process of its own) every
    `ask_every_s` (a ServerApp that died writes no status), and at every poll once the
    coordinator says it is done or failed."""
    deadline = time.time() + timeout
    flower, asked = None, 0.0
    status_file = Path(run_dir) / STATUS_FILE
    while time.time() < deadline:
        final = _coordinator_state(status_file) in ("done", "failed")
        if final or time.time() - asked >= ask_every_s:
            flower, asked = run_status(home, run_id), time.time()
            if flower and flower.startswith("finished"):
                break
        time.sleep(poll_s)
    status = json.loads(status_file.read_text()) if status_file.exists() else {"status": "unknown"}
    if not (flower and flower.startswith("finished")):
        status = {**status, "status": "timeout" if status.get("status") != "failed" else "failed"}
    return {**status, "flower": flower, "run_id": run_id}


# --- one machine --------------------------------------------------------------------------------
class LocalFederation:
    """A SuperLink and one SuperNode per site on this machine, as separate process groups.
    `host`: the name sites use to reach the SuperLink; other than 127.0.0.1, its Fleet API listens
    on every interface (a cluster job that sites on other nodes join: `coordinate`)."""

    def __init__(self, run_dir: str | Path, sites: Mapping[str, Site], *, tls: bool = False, wire_logs: bool = False,
                 host: str = "127.0.0.1", require_secagg: bool = False):
        self.run_dir = Path(run_dir).resolve()
        self.dir = self.run_dir / "flower"
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        self.sites = dict(sites)
        self.host = host
        self.ports = {"fleet": free_port(), "serverappio": free_port(), "control": free_port()}
        names = list(dict.fromkeys([host, "localhost", "127.0.0.1"]))
        self.tls = make_certificates(self.dir / "certs", names) if tls else None
        self.wire_logs = wire_logs
        self.require_secagg = require_secagg
        self.home = write_cli_home(self.dir / "cli", f"127.0.0.1:{self.ports['control']}",
                                   self.tls.ca if self.tls else None)
        self.procs: dict[str, subprocess.Popen] = {}

    def wire_log(self, name: str) -> Path:
        return self.dir / "wire" / f"{name}.jsonl"

    def _start(self, name: str, cmd: list[str], home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        out = open(self.dir / "logs" / f"{name}.log", "a")
        self.procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=home,
                                            env=process_env(FLWR_HOME=str(home)), start_new_session=True)
        out.close()

    def start_superlink(self) -> None:
        p = self.ports
        listen = "127.0.0.1" if self.host == "127.0.0.1" else "0.0.0.0"
        self._start("superlink", superlink_command(fleet=f"{listen}:{p['fleet']}",
                                                   serverappio=f"127.0.0.1:{p['serverappio']}",
                                                   control=f"127.0.0.1:{p['control']}", tls=self.tls,
                                                   database=self.dir / "superlink.db"),
                    self.dir / "superlink")
        _wait_port(p["control"], 60)
        _wait_port(p["fleet"], 60)

    def start_site(self, name: str) -> None:
        site = self.sites[name]
        if self.wire_logs:
            self.wire_log(name).parent.mkdir(parents=True, exist_ok=True)
        cmd = supernode_command(site, superlink=f"{'localhost' if self.tls else '127.0.0.1'}:{self.ports['fleet']}",
                                clientappio=f"127.0.0.1:{free_port()}", root_ca=self.tls.ca if self.tls else None,
                                wire_log=self.wire_log(name) if self.wire_logs else None,
                                require_secagg=self.require_secagg)
        self._start(name, cmd, site.work_dir / "flower-home")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill a process group (`superlink` takes its ServerApp with it; a site its ClientApp)."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        for s in (sig, signal.SIGKILL):
            try:
                os.killpg(proc.pid, s)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=30)
                return
            except subprocess.TimeoutExpired:
                continue

    def submit(self, cfg: FederationConfig, node_wait_s: float = 600, sites: int | None = None) -> int:
        rc = write_run_config(self.dir / "run_config.toml", self.run_dir, cfg, sites or len(self.sites), node_wait_s)
        return submit(self.home, rc)

    def wait(self, run_id: int, timeout: float) -> dict[str, Any]:
        return wait_for_run(self.home, run_id, self.run_dir, timeout)

    def run(self, cfg: FederationConfig, timeout: float) -> dict[str, Any]:
        """Start everything, run the federation, return its status (processes stay up)."""
        if "superlink" not in self.procs:
            self.start_superlink()
        for name in self.sites:
            if name not in self.procs:
                self.start_site(name)
        return self.wait(self.submit(cfg), timeout)

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# --- cluster jobs: a coordinator job, and site jobs that join it through the shared run folder ---
COORDINATOR_FILE = "coordinator.json"


def coordinate(run_dir: str | Path, cfg: FederationConfig, sites: int, *, host: str | None = None,
               timeout: float = 7 * 24 * 3600) -> dict[str, Any]:
    """Run the coordinator here (a SuperLink with TLS for this host, then the run) and tell joining
    sites where it is (<run_dir>/flower/coordinator.json, with the CA certificate beside it)."""
    host = host or socket.getfqdn()
    with LocalFederation(run_dir, {}, tls=True, host=host) as fed:
        fed.start_superlink()
        write_json_atomic({"host": host, "fleet": fed.ports["fleet"], "ca": str(fed.tls.ca), "time": time.time()},
                          fed.dir / COORDINATOR_FILE)
        return fed.wait(fed.submit(cfg, sites=sites), timeout)


def join(site: Site, run_dir: str | Path, timeout: float = 7 * 24 * 3600, poll_s: float = 5.0) -> int:
    """Run a site's SuperNode for the coordinator of `run_dir` until the federation ends (0 done,
    1 failed or timed out). Waits for the coordinator to announce itself first."""
    run_dir = Path(run_dir).resolve()
    started = time.time()
    info_path = run_dir / "flower" / COORDINATOR_FILE
    deadline = started + timeout
    while not info_path.exists():
        if time.time() > deadline:
            log.error("site %s: no coordinator announced in %s", site.name, info_path)
            return 1
        time.sleep(poll_s)
    info = json.loads(info_path.read_text())
    cmd = supernode_command(site, superlink=f"{info['host']}:{info['fleet']}", clientappio=f"127.0.0.1:{free_port()}",
                            root_ca=Path(info["ca"]))
    home = site.work_dir / "flower-home"
    home.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, env=process_env(FLWR_HOME=str(home)), cwd=home, start_new_session=True)
    status_file = run_dir / STATUS_FILE
    try:
        while time.time() < deadline:
            if status_file.exists():
                status = json.loads(status_file.read_text())
                if status.get("time", 0) > started and status.get("status") in ("done", "failed"):
                    return 0 if status["status"] == "done" else 1
            if proc.poll() is not None:
                log.error("site %s: the SuperNode exited (%s)", site.name, proc.returncode)
                return 1
            time.sleep(poll_s)
        return 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout:.0f} s (see the process logs)")
