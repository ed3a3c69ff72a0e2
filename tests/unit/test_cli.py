"""The CLI over a real SQLite file, driven through click's runner."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from chervil.cli import cli
from chervil.clock import FakeClock
from chervil.testing import drain
from tests.integration import itapp


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/cli.db"


def run(url: str, *args: str, input: str | None = None) -> str:
    sys.path.insert(0, str(Path(itapp.__file__).parent))
    result = CliRunner().invoke(cli, ["--url", url, *args], input=input,
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_enqueue_inspect_retry_purge(url: str, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHERVIL_TEST_LEDGER", str(tmp_path / "ledger.db"))
    app = itapp.build(url, FakeClock())
    out = CliRunner().invoke(cli, ["--url", url, "enqueue", "probe", "--args", '["k1"]'])
    assert out.exit_code != 0 and "no task named 'probe'" in str(out.exception)
    job_id = app.tasks["probe"].enqueue("k1").id
    doomed = app.tasks["sleepy"].enqueue("k2", "not-a-number")
    drain(app)  # sleepy fails on the bad duration until it is dead
    app.tasks["probe"].enqueue("waiting")

    listing = run(url, "jobs")
    assert job_id in listing and "succeeded" in listing and "dead (retries_exhausted)" in listing
    story = json.loads(run(url, "job", doomed.id, "--json"))
    assert story["status"] == "dead" and story["attempts"] == 5
    assert story["args"] == ["***", "***"]  # no app given: values hidden
    assert story["last_error"]["type"] == "TypeError"
    text = run(url, "job", doomed.id)
    assert "retries_exhausted" in text and "Traceback" in text

    dead = json.loads(run(url, "dead", "--json"))
    assert [d["id"] for d in dead] == [doomed.id]
    assert "nothing done" in run(url, "retry", "--all-dead", input="n\n")
    assert "requeued 1 job(s)" in run(url, "retry", "--all-dead", "--yes")

    queues = json.loads(run(url, "queues", "--json"))
    [default] = [q for q in queues if q["queue"] == "default"]
    assert default["ready"] == 2 and default["oldest_ready_age_seconds"] is not None
    run(url, "pause", "default")
    assert json.loads(run(url, "queues", "--json"))[0]["paused"] is True
    assert "paused" in run(url, "queues")
    run(url, "resume", "default")
    assert "cancelled 2 job(s)" in run(url, "purge", "default", "--yes")
    assert "nothing to" in run(url, "purge", "default", "--yes")
    app.close()


def test_enqueue_with_app_and_redaction(url: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    mod = tmp_path / "secretapp.py"
    mod.write_text(
        "from chervil import Chervil\n"
        f"app = Chervil({url!r})\n"
        "@app.task(name='login', sensitive=('password',))\n"
        "def login(user: str, password: str) -> None: ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    job_id = run(url, "-A", "secretapp:app", "enqueue", "login", "--args", '["ann", "hunter2"]'
                 ).strip()
    story = json.loads(run(url, "-A", "secretapp:app", "job", job_id, "--json"))
    assert story["args"] == ["ann", "***"]
    bad = CliRunner().invoke(cli, ["-A", "secretapp:app", "enqueue", "login", "--args", "[1"])
    assert bad.exit_code == 2 and "not valid JSON" in bad.output


def test_pause_task_and_schedules(url: str, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    mod = tmp_path / "cronjobs.py"
    mod.write_text(
        "from chervil import Chervil\n"
        f"app = Chervil({url!r})\n"
        "@app.cron('0 3 * * *', tz='Europe/Paris', name='nightly')\n"
        "def nightly() -> None: ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert "task cronjobs.nightly paused" in run(url, "pause", "--task", "cronjobs.nightly")
    assert "task cronjobs.nightly: paused" in run(url, "queues")
    run(url, "resume", "--task", "cronjobs.nightly")
    rows = json.loads(run(url, "-A", "cronjobs:app", "schedules", "--json"))
    assert rows[0]["name"] == "nightly" and rows[0]["last"] is None
    job_id = run(url, "-A", "cronjobs:app", "schedules", "run", "nightly").strip()
    story = json.loads(run(url, "job", job_id, "--json"))
    assert story["unique_key"].startswith("cron:nightly:manual:")
    assert "schema is up to date" in run(url, "migrate")
