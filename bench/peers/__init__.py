"""Drivers, one per queue library, each run by that library's own virtualenv python.

They share ``benchtask.py`` (stdlib + redis-py only) and are never imported by the
project's own interpreter, except ``chervil_peer`` and the raw loops, which run in it.
"""
