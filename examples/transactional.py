"""The runnable example of docs/transactional.md: python examples/transactional.py

Uses a SQLite file that holds both the app's data and the jobs.
"""

import sqlite3
import tempfile

from chervil import Chervil

path = f"{tempfile.mkdtemp()}/shop.db"
app = Chervil(f"sqlite:///{path}")


@app.task
def send_receipt(order_id: int) -> None: ...


if __name__ == "__main__":
    send_receipt.enqueue(0)  # creates chervil's tables in the file
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER)")

    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO orders VALUES (1, 1999)")
    kept = send_receipt.enqueue(1, connection=db)  # type: ignore[call-arg]
    db.execute("COMMIT")

    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO orders VALUES (2, 500)")
    gone = send_receipt.enqueue(2, connection=db)  # type: ignore[call-arg]
    db.execute("ROLLBACK")

    print("committed order's job:", kept.status())
    print("rolled-back order's job exists:", app.broker.get(gone.id) is not None)
