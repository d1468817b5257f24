"""The planners' pages render without a browser or a server: every template, suppressed cells
shown as such, numbers as in the cells, and nothing unescaped from the data."""

from __future__ import annotations

from types import SimpleNamespace

from nightingale.api.pages import _TEMPLATES, _blocks


def _cells():
    base = {"outcome": "death", "horizon_days": 365.0, "lower": 8.0, "upper": 20.0, "observed": 13, "covered": True}
    return [
        {**base, "group": "all", "value": "all", "patients": 900, "expected": 14.2, "suppressed": None},
        {**base, "group": "sex", "value": "F", "patients": 450, "expected": 10.5, "suppressed": None},
        {**base, "group": "sex", "value": "<b>M</b>", "patients": None, "expected": None, "lower": None,
         "upper": None, "observed": None, "suppressed": "small count"},
    ]


def test_the_job_page_shows_numbers_and_suppressed_cells_and_escapes_values():
    job = SimpleNamespace(id="a" * 32, dataset="demo", status="done", done_shards=2, shards=2, done_patients=900, error=None)
    r = {"model": "model", "gate": {"passed": True}, "config": {"prediction_time": "2024-06-01", "split": None,
         "rollouts": 8, "small_count_threshold": 10}, "counts": {"at_risk": 900}, "interval": "95% ..."}
    html = _TEMPLATES.get_template("job.html").render(signed_in=True, job=job, r=r, blocks=_blocks(_cells()))
    assert 'data-cell="death|365|sex|F"' in html and ">10.50<" in html and "8.00 – 20.00" in html
    assert "suppressed (small count)" in html and "<b>M</b>" not in html and "&lt;b&gt;M&lt;/b&gt;" in html
    assert html.count("<svg") == 1 and "<circle" in html  # one grouping (sex), the observed count as a dot


def test_the_sign_in_and_list_pages_render():
    assert 'type="password" name="key"' in _TEMPLATES.get_template("login.html").render(signed_in=False, message=None)
    jobs = [SimpleNamespace(id="b" * 32, dataset="demo", status="running", created_at="2026-12-07T06:00:00",
                            done_patients=1234)]
    html = _TEMPLATES.get_template("jobs.html").render(signed_in=True, jobs=jobs)
    assert 'href="/population/' + "b" * 32 + '"' in html and "1,234" in html and "Sign out" in html
