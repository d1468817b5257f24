"""`nightingale federate`: federated pretraining across sites (see README "Training across sites").

    nightingale federate local --sites-dir runs/fed/sites --run-dir runs/fed/run   # all on one machine
    nightingale federate certs --out certs --host coordinator.example.org          # TLS material
    nightingale federate superlink --tls-dir certs                                 # coordinator host
    nightingale federate site --name north --data /data/meds --work /secure/north \\
        --superlink coordinator.example.org:9092 --root-ca certs/ca.crt            # each site's host
    nightingale federate submit --control coordinator.example.org:9093 --root-ca certs/ca.crt \\
        --run-dir /fed/run --sites 3                                               # start (or resume) a run

Settings come from configs/federated/default.yaml (--config another file), with `--set key=value`
overrides (dotted keys: `--set rounds=10 --set secagg.enabled=false --set model=small`).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "federated" / "default.yaml"


def load_config(path: str | None, overrides: list[str] | None):
    """The FederationConfig of a YAML file plus `key=value` overrides (values read as YAML)."""
    import yaml

    from nightingale.federated.config import FederationConfig

    source = Path(path) if path else DEFAULT_CONFIG
    try:
        data: dict[str, Any] = yaml.safe_load(source.read_text()) or {}
    except OSError as exc:
        raise ValueError(f"--config {source}: cannot read ({exc.strerror or exc})") from None
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected key=value")
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = yaml.safe_load(value)
    return FederationConfig.from_mapping(data)


def register(subparsers) -> None:
    p = subparsers.add_parser("federate", help="federated pretraining across sites (Flower)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="federate_command", required=True, metavar="ACTION")

    def settings(q):
        q.add_argument("--config", help=f"federation settings (default {DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parents[2])})")
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")

    q = sub.add_parser("local", help="run a whole federation on this machine (one process per site)")
    q.add_argument("--sites-dir", required=True, help="one MEDS folder per site inside (nightingale simulate-sites)")
    q.add_argument("--run-dir", required=True, help="the coordinator's folder (rounds/, vocab/, model/)")
    q.add_argument("--work-dir", help="the sites' work folders (default <run-dir>/sites/<site>)")
    q.add_argument("--tls", action="store_true", help="TLS between the processes, with certificates made here")
    q.add_argument("--timeout", type=float, default=24 * 3600, help="seconds to wait for the run")
    settings(q)
    q.set_defaults(func=run_local)

    q = sub.add_parser("certs", help="make a CA and the coordinator's TLS certificate")
    q.add_argument("--out", required=True, help="folder for ca.crt, server.pem, server.key")
    q.add_argument("--host", action="append", required=True, help="the coordinator's host name or IP (repeatable)")
    q.set_defaults(func=run_certs)

    q = sub.add_parser("superlink", help="start the coordinator's SuperLink (it runs the ServerApp)")
    q.add_argument("--address", default="0.0.0.0", help="interface the Fleet API (sites) listens on")
    q.add_argument("--fleet-port", type=int, default=9092, help="sites connect here")
    q.add_argument("--control-port", type=int, default=9093,
                   help="`federate submit` connects here; it listens on 127.0.0.1 only (submit on this host)")
    q.add_argument("--serverappio-port", type=int, default=9091, help="local port for the ServerApp")
    q.add_argument("--tls-dir", help="ca.crt, server.pem, server.key (federate certs); omit only with --insecure")
    q.add_argument("--insecure", action="store_true", help="no TLS (a test network only)")
    q.add_argument("--database", default="superlink-state/superlink.db",
                   help="the SuperLink's state (a restarted coordinator keeps its sites); ':memory:' keeps none")
    q.add_argument("--supernode-auth", action="store_true",
                   help="accept only registered site keys (flwr supernode register <key.pub>)")
    q.set_defaults(func=run_superlink)

    q = sub.add_parser("site", help="start one site's SuperNode (its data stay on this host)")
    q.add_argument("--name", required=True, help="the site's name (letters, digits, - and _)")
    q.add_argument("--data", required=True, help="the site's MEDS folder")
    q.add_argument("--work", required=True, help="the site's work folder (prepared corpus, checkpoints)")
    q.add_argument("--superlink", help="the coordinator's Fleet API, host:9092 (or --join)")
    q.add_argument("--root-ca", help="the federation's CA certificate (federate certs); omit only with --insecure")
    q.add_argument("--insecure", action="store_true", help="no TLS (a test network only)")
    q.add_argument("--auth-key", help="the site's private key (ssh-keygen -t ecdsa -b 384), when the SuperLink authenticates sites")
    q.add_argument("--clientappio", default="127.0.0.1:9094", help="local address for the site's ClientApp")
    q.add_argument("--require-secagg", action="store_true", help="refuse to send an update unless it is masked by SecAgg+")
    q.add_argument("--join", metavar="RUN_DIR", help="a cluster job: join the `federate coordinator` job of RUN_DIR "
                                                     "(its address and CA certificate) and stop when the run ends")
    q.set_defaults(func=run_site)

    q = sub.add_parser("coordinator", help="a cluster job: run the coordinator here; sites join with `site --join`")
    q.add_argument("--run-dir", required=True, help="the coordinator's run folder (shared with the site jobs)")
    q.add_argument("--sites", type=int, required=True, help="sites that must join before it starts")
    q.add_argument("--host", help="this host's name as sites reach it (default: its fully qualified name)")
    q.add_argument("--timeout", type=float, default=7 * 24 * 3600, help="seconds to wait for the run")
    settings(q)
    q.set_defaults(func=run_coordinator)

    q = sub.add_parser("submit", help="start (or resume) a federation on a running SuperLink")
    q.add_argument("--control", required=True, help="the coordinator's Control API, host:9093")
    q.add_argument("--root-ca", help="the federation's CA certificate; omit only with --insecure")
    q.add_argument("--insecure", action="store_true", help="no TLS (a test network only)")
    q.add_argument("--run-dir", required=True, help="the coordinator's run folder (on the SuperLink's host)")
    q.add_argument("--sites", type=int, required=True, help="sites that must be connected before it starts")
    q.add_argument("--wait", action="store_true", help="wait for the run to end and report")
    q.add_argument("--timeout", type=float, default=24 * 3600, help="seconds to wait with --wait")
    settings(q)
    q.set_defaults(func=run_submit)


def _tls_choice(path: str | None, insecure: bool, option: str) -> None:
    if not path and not insecure:
        raise ValueError(f"{option}: needed for TLS (nightingale federate certs makes it); or --insecure on a test network")


def run_local(args: argparse.Namespace) -> int:
    from nightingale.federated.launch import LocalFederation
    from nightingale.federated.site import Site

    try:
        cfg = load_config(args.config, args.set)
        root = Path(args.sites_dir)
        names = sorted(p.name for p in root.iterdir() if (p / "data").is_dir()) if root.is_dir() else []
        if len(names) < cfg.min_sites:
            raise ValueError(f"--sites-dir {root}: {len(names)} site folder(s) with data/, need min_sites={cfg.min_sites}")
        work = Path(args.work_dir) if args.work_dir else Path(args.run_dir) / "sites"
        sites = {n: Site(n, root / n, work / n) for n in names}
        with LocalFederation(args.run_dir, sites, tls=args.tls) as fed:
            log.info("federation of %s: %d rounds of %d steps, logs in %s", names, cfg.rounds, cfg.local_steps,
                     fed.dir / "logs")
            status = fed.run(cfg, timeout=args.timeout)
    except (ValueError, OSError, RuntimeError, TimeoutError) as exc:
        log.error("federate local: %s", exc)
        return 2
    return _report(status)


def _report(status: dict[str, Any]) -> int:
    if status.get("status") == "done":
        log.info("federation done after round %s: model in %s", status.get("round"), status.get("model_dir"))
        return 0
    log.error("federation %s: %s", status.get("status"), status.get("message", status.get("flower")))
    for site, why in (status.get("errors") or {}).items():
        log.error("  %s: %s", site, why)
    return 1


def run_certs(args: argparse.Namespace) -> int:
    from nightingale.federated.launch import make_certificates

    tls = make_certificates(args.out, list(dict.fromkeys([*args.host, "localhost", "127.0.0.1"])))
    log.info("wrote %s (give to every site), %s and %s (the coordinator's; keep the key private)",
             tls.ca, tls.cert, tls.key)
    return 0


def _exec(cmd: list[str], **env: str) -> int:
    from nightingale.federated.launch import process_env

    log.info("starting %s", " ".join(cmd))
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execvpe(cmd[0], cmd, process_env(**env))
    return 0  # not reached


def run_superlink(args: argparse.Namespace) -> int:
    from nightingale.federated.launch import Tls, superlink_command

    try:
        _tls_choice(args.tls_dir, args.insecure, "--tls-dir")
    except ValueError as exc:
        log.error("federate superlink: %s", exc)
        return 2
    tls = None
    if args.tls_dir:
        d = Path(args.tls_dir)
        tls = Tls(d / "ca.crt", d / "server.pem", d / "server.key")
        missing = [str(p) for p in (tls.ca, tls.cert, tls.key) if not p.exists()]
        if missing:
            log.error("federate superlink: --tls-dir lacks %s (make them with `nightingale federate certs`)", missing)
            return 2
    a = args.address
    return _exec(superlink_command(fleet=f"{a}:{args.fleet_port}", serverappio=f"127.0.0.1:{args.serverappio_port}",
                                   control=f"127.0.0.1:{args.control_port}", tls=tls, supernode_auth=args.supernode_auth,
                                   database=None if args.database == ":memory:" else Path(args.database)))


def run_site(args: argparse.Namespace) -> int:
    from nightingale.federated.launch import join, supernode_command
    from nightingale.federated.site import Site

    try:
        site = Site(args.name, Path(args.data), Path(args.work))
        if not site.data_dir.is_dir():
            raise ValueError(f"--data {site.data_dir}: no such folder")
        if args.join:
            site.work_dir.mkdir(parents=True, exist_ok=True)
            return join(site, Path(args.join))
        if not args.superlink:
            raise ValueError("--superlink: required (the coordinator's host:9092), or --join RUN_DIR")
        _tls_choice(args.root_ca, args.insecure, "--root-ca")
    except ValueError as exc:
        log.error("federate site: %s", exc)
        return 2
    site.work_dir.mkdir(parents=True, exist_ok=True)
    cmd = supernode_command(site, superlink=args.superlink, clientappio=args.clientappio,
                            root_ca=Path(args.root_ca) if args.root_ca else None,
                            auth_key=Path(args.auth_key) if args.auth_key else None,
                            require_secagg=args.require_secagg)
    return _exec(cmd, FLWR_HOME=str(site.work_dir / "flower-home"))


def run_coordinator(args: argparse.Namespace) -> int:
    from nightingale.federated.launch import coordinate

    try:
        cfg = load_config(args.config, args.set)
        status = coordinate(args.run_dir, cfg, args.sites, host=args.host, timeout=args.timeout)
    except (ValueError, OSError, RuntimeError, TimeoutError) as exc:
        log.error("federate coordinator: %s", exc)
        return 2
    return _report(status)


def run_submit(args: argparse.Namespace) -> int:
    from nightingale.federated import launch

    try:
        _tls_choice(args.root_ca, args.insecure, "--root-ca")
        cfg = load_config(args.config, args.set)
        run_dir = Path(args.run_dir)
        home = launch.write_cli_home(run_dir / "flower" / "cli", args.control,
                                     Path(args.root_ca) if args.root_ca else None)
        rc = launch.write_run_config(run_dir / "flower" / "run_config.toml", run_dir, cfg, args.sites, 3600)
        run_id = launch.submit(home, rc)
        log.info("submitted run %d; status in %s", run_id, run_dir / "status.json")
        if not args.wait:
            return 0
        return _report(launch.wait_for_run(home, run_id, run_dir, args.timeout))
    except (ValueError, OSError, RuntimeError) as exc:
        log.error("federate submit: %s", exc)
        return 2
