"""The runnable example of docs/flow-control.md: python examples/flow_control.py"""

import tempfile
from datetime import timedelta

from chervil import Chervil
from chervil.testing import drain

app = Chervil(f"sqlite:///{tempfile.mkdtemp()}/flow.db")
sent: list[int] = []


@app.task(unique="welcome:{user_id}", unique_for=timedelta(hours=24))
def send_welcome(user_id: int) -> None:
    sent.append(user_id)


@app.task(lock="account:{account_id}")
def charge(account_id: int, cents: int) -> None: ...


@app.task(rate_limit="100/m", rate_key="customer:{customer_id}", concurrency=4)
def call_partner_api(customer_id: int, payload: dict[str, str]) -> None: ...


if __name__ == "__main__":
    first = send_welcome.enqueue(42)
    again = send_welcome.enqueue(42)  # the same job: no second email
    print("duplicate:", again.duplicate, again.id == first.id)
    for cents in (100, 200, 300):
        charge.enqueue(7, cents)  # run one at a time for account 7
    call_partner_api.enqueue(1, {"k": "v"})
    report = drain(app)
    print("ran", report.ran, "jobs; welcome emails sent:", sent)
