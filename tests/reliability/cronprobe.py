"""A per-second schedule, for the scheduler_tick crash point."""

from chervil import Chervil

app = Chervil()


@app.cron("* * * * * *", misfire=60, name="tick")
def tick() -> None: ...
