"""The runnable example of docs/core.md: python examples/quickstart.py"""

import tempfile

from chervil import Chervil, Retry, current_job
from chervil.testing import drain

app = Chervil(f"sqlite:///{tempfile.mkdtemp()}/quickstart.db")


@app.task(retry=Retry(max_attempts=3, backoff=0.01), store_result=True)
def charge(order_id: int, cents: int) -> str:
    job = current_job()
    assert job is not None
    if job.attempt == 1:
        raise ConnectionError("gateway timed out")  # retried with backoff
    return f"charged {cents} for order {order_id} (key {job.idempotency_key})"


if __name__ == "__main__":
    handle = charge.enqueue(1042, 1999)  # committed to the broker before this returns
    drain(app)  # what a worker does, in this process
    print(handle.status(), handle.result())
