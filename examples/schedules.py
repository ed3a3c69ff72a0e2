"""The runnable example of docs/scheduling.md: python examples/schedules.py"""

import tempfile
from datetime import UTC, datetime

from chervil import Chervil
from chervil.admin import Admin

app = Chervil(f"sqlite:///{tempfile.mkdtemp()}/cron.db")


@app.cron("0 7 * * 1-5", tz="Europe/Paris", misfire="once")
def morning_digest() -> None: ...


@app.task
def cleanup(days: int) -> None: ...


app.schedule(cleanup, cron="*/15 * * * *", args=(30,), name="cleanup-30d", misfire=4)

if __name__ == "__main__":
    for row in Admin(app).schedules():
        when = datetime.fromtimestamp(row["next"], UTC).isoformat()
        print(f"{row['name']}: next fire {when} ({row['cron']} {row['tz']})")
