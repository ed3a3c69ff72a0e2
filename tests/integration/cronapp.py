"""An app with a per-second schedule, for the multi-scheduler test."""

from chervil import Chervil

app = Chervil()


@app.cron("* * * * * *", misfire=60, name="tick")
def tick() -> None: ...
