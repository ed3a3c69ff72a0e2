"""chervil: a background task queue with leases, retries, dead letters and visibility."""

from .app import Chervil
from .brokers.base import Broker
from .clock import FakeClock, SystemClock
from .errors import (
    BrokerUnavailable,
    ChervilError,
    ConfigurationError,
    DecodeError,
    EnqueueError,
    JobNotFound,
    JobTimeout,
    NotSerializable,
    PayloadTooLarge,
    UnknownTask,
)
from .job import DeadReason, ErrorInfo, Job, JobStatus
from .retry import Discard, Retry
from .runner import JobContext, current_job
from .settings import Settings
from .task import JobFailed, JobHandle, Task

__version__ = "0.1.0"

__all__ = [
    "Broker",
    "BrokerUnavailable",
    "Chervil",
    "ChervilError",
    "ConfigurationError",
    "DeadReason",
    "DecodeError",
    "Discard",
    "EnqueueError",
    "ErrorInfo",
    "FakeClock",
    "Job",
    "JobContext",
    "JobFailed",
    "JobHandle",
    "JobNotFound",
    "JobStatus",
    "JobTimeout",
    "NotSerializable",
    "PayloadTooLarge",
    "Retry",
    "Settings",
    "SystemClock",
    "Task",
    "UnknownTask",
    "__version__",
    "current_job",
]
