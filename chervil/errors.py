"""Every error chervil raises, under one base class.

    ChervilError
    ├── ConfigurationError        bad URL, setting or unsafe server configuration
    ├── BrokerUnavailable         the broker could not be reached within the timeout
    ├── EnqueueError              the job was refused at enqueue
    │   ├── PayloadTooLarge       encoded arguments over the payload limit
    │   └── NotSerializable       an argument is not JSON
    ├── UnknownTask               no task registered under that name
    ├── JobNotFound               no job with that id
    ├── DecodeError               a stored record is not a valid job payload
    └── JobTimeout                JobHandle.result() waited longer than asked

Every message says what was wrong and what to do next. Arguments that do not bind
to a task's signature raise the standard ``TypeError`` at enqueue, in the caller.
"""

from __future__ import annotations


class ChervilError(Exception):
    """Base class of every chervil error."""


class ConfigurationError(ChervilError):
    """A setting, URL or server configuration is wrong or unsafe."""


class BrokerUnavailable(ChervilError):
    """The broker did not answer in time; nothing was committed."""


class EnqueueError(ChervilError):
    """The job was refused at enqueue; nothing was committed."""


class PayloadTooLarge(EnqueueError):
    """The encoded arguments exceed the payload limit."""


class NotSerializable(EnqueueError):
    """An argument cannot be encoded as JSON."""


class UnknownTask(ChervilError):
    """No task is registered under the given name."""


class JobNotFound(ChervilError):
    """No job exists with the given id (it may have expired by retention)."""


class DecodeError(ChervilError):
    """A stored record could not be decoded into a job payload."""


class JobTimeout(ChervilError):
    """A job did not reach a terminal state within the time asked for."""
