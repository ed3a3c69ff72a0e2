"""Workers: a supervisor process (``supervisor.py``) running child processes (``child.py``)."""
