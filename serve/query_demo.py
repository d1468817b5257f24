"""Call each endpoint of a running Nightingale server once and print the answers (make demo).

    NIGHTINGALE_API_KEY=secret python serve/query_demo.py --url http://127.0.0.1:8000

The key needs the forecast and generate scopes (or admin). The example patient is made up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import httpx

PATIENT = {
    "sex": "M",
    "birth_date": "1950-04-02",
    "static_codes": ["ETHNICITY//White"],
    "events": [
        {"time": "2023-01-10T09:00:00", "code": "SNOMED//185345009"},
        {"time": "2023-01-10T09:05:00", "code": "LOINC//8480-6", "numeric_value": 152.0},
        {"time": "2023-01-10T09:10:00", "code": "ICD10//I10"},
        {"time": "2023-02-01T09:00:00", "code": "ATC//C08CA01"},
        {"time": "2023-06-12T11:00:00", "code": "ICD10//I50.9"},
    ],
}


def show(title: str, r: httpx.Response) -> None:
    print(f"\n== {title}: HTTP {r.status_code}")
    try:
        print(json.dumps(r.json(), indent=2)[:3000])
    except ValueError:
        print(r.text[:1500])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--key", default=os.environ.get("NIGHTINGALE_API_KEY"))
    ap.add_argument("--wait", type=float, default=300, help="seconds to wait for /readyz")
    ap.add_argument("--dataset", default=None, help="a dataset registered with the server (serve.datasets) to "
                    "run a population forecast over")
    args = ap.parse_args()
    if not args.key:
        ap.error("pass --key or set NIGHTINGALE_API_KEY")
    c = httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {args.key}"}, timeout=600)
    deadline = time.time() + args.wait
    while True:
        try:
            if c.get("/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.time() > deadline:
            print("server not ready", file=sys.stderr)
            return 1
        time.sleep(2)
    show("GET /healthz", c.get("/healthz"))
    show("GET /readyz", c.get("/readyz"))
    show("GET /v1/model", c.get("/v1/model"))
    show("POST /v1/next-events", c.post("/v1/next-events", json={"patient": PATIENT, "top_k": 5}))
    show("POST /v1/forecasts", c.post("/v1/forecasts", json={
        "patients": [PATIENT],
        "outcomes": [{"name": "death", "codes": ["MEDS_DEATH"]},
                     {"name": "emergency admission", "codes": ["ADMISSION//EMERGENCY"]}],
        "horizons_days": [365],
        "rollouts": 64,
    }))
    job = c.post("/v1/cohorts", json={"n_patients": 5, "seed": 0})
    show("POST /v1/cohorts", job)
    if job.status_code == 202:
        jid = job.json()["id"]
        while (st := c.get(f"/v1/cohorts/{jid}")).json()["status"] in ("queued", "running"):
            time.sleep(1)
        show(f"GET /v1/cohorts/{jid}", st)
        csv = c.get(f"/v1/cohorts/{jid}/download", params={"format": "csv"})
        print(f"\n== GET /v1/cohorts/{jid}/download?format=csv: HTTP {csv.status_code}")
        print("\n".join(csv.text.splitlines()[:12]))
    if args.dataset:
        pop = c.post("/v1/population-forecasts", json={
            "dataset": args.dataset, "split": "held_out", "prediction_time": "2024-06-01",
            "outcomes": [{"name": "death", "codes": ["MEDS_DEATH"]},
                         {"name": "emergency admission", "codes": ["ADMISSION//EMERGENCY"]}],
            "horizons_days": [365], "groups": ["age_band", "sex"], "rollouts": 4, "backtest": True,
        })
        show("POST /v1/population-forecasts", pop)
        if pop.status_code == 202:
            jid = pop.json()["id"]
            while (st := c.get(f"/v1/population-forecasts/{jid}")).json()["status"] in ("queued", "running"):
                time.sleep(2)
            res = st.json()
            print(f"\n== GET /v1/population-forecasts/{jid}: HTTP {st.status_code}, {res['status']}, "
                  f"{res['done_patients']} patients; the whole population, expected [95%] vs observed:")
            for cell in (res["results"] or {}).get("cells", []):
                if cell["group"] != "all":
                    continue
                what = (f"suppressed ({cell['suppressed']}: under the small-count threshold)" if cell["suppressed"] else
                        f"{cell['expected']} [{cell['lower']}, {cell['upper']}] vs {cell['observed']} of {cell['patients']}")
                print(f"   {cell['outcome']} within {cell['horizon_days']:g} d: {what}")
            print(f"   in a browser: {args.url}{res['page'].split(args.url, 1)[-1] if res.get('page') else ''} "
                  "(sign in with the same key)")
    m = c.get("/metrics")
    print(f"\n== GET /metrics: HTTP {m.status_code}")
    print("\n".join(line for line in m.text.splitlines() if line.startswith("nightingale_") and "bucket" not in line)[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
