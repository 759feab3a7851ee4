"""The job runner: submit, persist, claim under a lease, run, record exactly once."""

from __future__ import annotations

import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

from radvault._diagnostics import log_unexpected
from radvault.errors import ConfigurationError, ObjectNotFound, RadVaultError
from radvault.jobs._errors import JobError, JobTimeout, describe_error, is_transient
from radvault.jobs._job import Job, JobInfo, JobStatus, running_job
from radvault.jobs._registry import TaskRegistry, TaskSpec, default_registry
from radvault.jobs._store import RESULT_MAX_BYTES, Clock, JobStore, engine_from, json_object, utcnow

__all__ = ["Backoff", "Dispatcher", "JobRunner", "exponential_backoff"]

log = logging.getLogger(__name__)

Backoff = Callable[[int], float]
"""``backoff(attempt) -> seconds`` to wait after failed attempt number ``attempt`` (1-based)."""

Dispatcher = Callable[[str, str, float], None]
"""``dispatch(job_id, task, delay_s)``: hand a runnable job to remote workers (Celery)."""

_RANDOM = secrets.SystemRandom()

# What the job store raises when the database is in trouble (lost connection,
# busy or locked database, a missing table, an exhausted connection pool): the
# worker waits and tries again. Anything else escaping the runner is a bug.
_DATABASE_ERRORS: tuple[type[Exception], ...] = (sa_exc.DBAPIError, sa_exc.TimeoutError)


def exponential_backoff(
    base_s: float = 1.0, factor: float = 2.0, max_s: float = 300.0, jitter: float = 0.1
) -> Backoff:
    """Back-off doubling from ``base_s`` up to ``max_s``, spread by +/- ``jitter`` (a fraction).

    Raises
    ------
    ConfigurationError
        When a value is negative, ``factor`` < 1 or ``jitter`` >= 1.
    """
    if base_s < 0 or max_s < 0 or factor < 1 or not 0 <= jitter < 1:
        raise ConfigurationError("back-off needs base_s, max_s >= 0, factor >= 1, 0 <= jitter < 1")

    def backoff(attempt: int) -> float:
        delay = min(max_s, base_s * factor ** max(0, attempt - 1))
        return delay * (1 + _RANDOM.uniform(-jitter, jitter)) if jitter else delay

    return backoff


class JobRunner:
    """Runs registered task functions on persisted jobs, in-process or through Celery.

    Jobs live in the ``jobs_jobs`` table (created if missing), typically in
    the vault catalog's database. :meth:`start` runs a pool of worker threads
    (the embedded default); :meth:`run_pending` works in the calling thread;
    :meth:`run_job` is what a Celery worker calls for one message.

    Parameters
    ----------
    engine : sqlalchemy.Engine or str or URL
        The database: ``Catalog(...).engine`` to share the catalog's, or a
        URL (opened like the catalog; closed by :meth:`close`).
    registry : TaskRegistry, optional
        The task functions (default: :data:`radvault.jobs.default_registry`).
    context : object, optional
        Passed as the first argument of every task function (the open
        vault, the model registry...).
    workers : int
        Worker threads started by :meth:`start`.
    max_attempts : int
        Attempts per job, first included; recorded with each job at submission.
    backoff : callable
        ``backoff(attempt) -> seconds`` before retrying a transient failure.
    clock : callable
        Returns the current aware UTC time (tests inject one to expire leases).
    lease_s : float
        How long a claim holds a job without renewal; a heartbeat renews it
        every third of that while the task runs. A worker that dies loses its
        job to another worker once the lease expires.
    poll_s : float
        How often idle workers and :meth:`wait` look at the database.
    name : str, optional
        Shown in lease tokens and logs (default: a random id).
    create_tables : bool
        Create the ``jobs_`` tables if missing.

    Raises
    ------
    ConfigurationError
        When a setting is invalid or the database is unsupported.
    JobError
        When the tables cannot be created.

    Notes
    -----
    Task functions must be idempotent: completion is recorded exactly once
    (a compare-and-set on the lease token), but a task may *run* more than
    once when a worker crashes or stalls past its lease, or when a transient
    failure is retried. Use :func:`radvault.jobs.current_job` ``.job_id`` as
    the id of what the task writes so a re-run finds its earlier work.
    """

    def __init__(
        self,
        engine: Engine | str | URL,
        registry: TaskRegistry | None = None,
        *,
        context: Any = None,
        workers: int = 2,
        max_attempts: int = 3,
        backoff: Backoff | None = None,
        clock: Clock = utcnow,
        lease_s: float = 60.0,
        poll_s: float = 0.5,
        name: str | None = None,
        create_tables: bool = True,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigurationError("workers must be a positive integer")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigurationError("max_attempts must be a positive integer")
        if not lease_s > 0 or not poll_s > 0:
            raise ConfigurationError("lease_s and poll_s must be positive")
        self.registry = registry if registry is not None else default_registry
        self.context = context
        self.workers = workers
        self.max_attempts = max_attempts
        self.lease_s = float(lease_s)
        self.poll_s = float(poll_s)
        self.name = name or f"runner-{uuid.uuid4().hex[:8]}"
        self._backoff = backoff if backoff is not None else exponential_backoff()
        db, self._close_engine = engine_from(engine)
        try:
            self._store = JobStore(db, clock=clock)
            if create_tables:
                self._store.create_tables()
        except Exception:
            if self._close_engine is not None:
                self._close_engine()
            raise
        self._dispatcher: Dispatcher | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._finished = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ submit / read

    def submit(
        self,
        task_name: str,
        payload: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        actor: str,
    ) -> Job:
        """Persist a job for ``task_name`` and hand it to the workers.

        Parameters
        ----------
        task_name : str
            A registered task.
        payload : mapping
            JSON object (at most 64 KiB) given to the task. Pseudonymous ids
            only: never PHI.
        idempotency_key : str, optional
            Submitting again with the same key returns the job already stored
            (whatever its state) instead of creating a second one. Keys are
            global: a face taking keys from clients should prefix them (with
            the actor, say).
        actor : str
            Who asks (pseudonymous user id), recorded with the job.

        Returns
        -------
        Job
            The new job, or the existing one for this key.

        Raises
        ------
        ObjectNotFound
            When no task has this name.
        JobRejected
            When the payload, actor or key is malformed.
        IdempotencyConflict
            When the key was used for another task or payload.
        """
        self.registry.get(task_name)
        job, created = self._store.insert(
            task_name, payload, actor=actor, idempotency_key=idempotency_key,
            max_attempts=self.max_attempts,
        )
        if created:
            log.info("job %s submitted (task %s)", job.job_id, job.task)
            self._announce(job.job_id, job.task, 0.0)
        else:
            log.info("job %s returned for a repeated idempotency key", job.job_id)
        return job

    def get(self, job_id: str) -> Job:
        """Return the job's current state.

        Raises
        ------
        ObjectNotFound
            When no job has this id.
        """
        return self._store.get(job_id)

    def wait(self, job_id: str, timeout: float | None = 60.0) -> Job:
        """Block until the job succeeded or failed, and return it.

        Parameters
        ----------
        job_id : str
            The job.
        timeout : float or None
            Seconds to wait at most; ``None`` waits for ever.

        Returns
        -------
        Job
            The job in a final state (check ``status``: a failed job is
            returned, not raised).

        Raises
        ------
        ObjectNotFound
            When no job has this id.
        JobTimeout
            When the job is still pending or running after ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self._store.get(job_id)
            if job.done:
                return job
            left = self.poll_s if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise JobTimeout(f"job {job_id} still {job.status.value} after {timeout} s")
            with self._finished:
                self._finished.wait(min(left, self.poll_s))

    def counts(self) -> dict[str, int]:
        """How many jobs are in each status."""
        return self._store.counts()

    # ------------------------------------------------------------------ running

    def run_pending(self, max_jobs: int | None = None) -> int:
        """Run claimable jobs in the calling thread until none is left (or ``max_jobs``).

        Jobs waiting out a back-off are not claimable yet and are left.

        Returns
        -------
        int
            How many attempts ran.
        """
        ran = 0
        while max_jobs is None or ran < max_jobs:
            if not self._run_one():
                break
            ran += 1
        return ran

    def run_job(self, job_id: str) -> Job:
        """Claim and run one given job if it is claimable now (a Celery worker's entry).

        A job already finished, or running under a live lease elsewhere, is
        left alone (a duplicate message is harmless). A pending job not yet
        due is handed back to the dispatcher for the remaining delay.

        Returns
        -------
        Job
            Its state afterwards.

        Raises
        ------
        ObjectNotFound
            When no job has this id.
        """
        token = self._token()
        claimed = self._store.claim(token, self.lease_s, job_id)
        if claimed is not None:
            self._execute(claimed, token)
        job = self._store.get(job_id)
        if job.status is JobStatus.PENDING and claimed is None:
            delay = (job.available_at - self._store.now()).total_seconds()
            if delay > 0:
                self._announce(job.job_id, job.task, delay)
        return job

    def recover(self) -> int:
        """Hand every claimable job (due pending, or lease expired) to the workers again.

        Embedded workers find them by polling; with a dispatcher (Celery)
        this re-sends their messages, for lost messages and dead workers.
        Call it when workers start and now and then.

        Returns
        -------
        int
            How many jobs were announced.
        """
        jobs = self._store.due()
        for job in jobs:
            self._announce(job.job_id, job.task, 0.0)
        return len(jobs)

    def set_dispatcher(self, dispatcher: Dispatcher | None) -> None:
        """Send runnable jobs to remote workers through ``dispatcher`` (``None``: in-process)."""
        self._dispatcher = dispatcher

    def start(self) -> None:
        """Start the worker threads (no-op when they run).

        They claim jobs until :meth:`stop`, including jobs left pending or
        abandoned by an earlier process.

        Raises
        ------
        ConfigurationError
            When the database is an in-memory SQLite one: its single shared
            connection cannot serve several threads (use a file, or
            :meth:`run_pending`).
        """
        url = self._store.engine.url
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            raise ConfigurationError("worker threads need a SQLite file or PostgreSQL, "
                                     "not an in-memory database")
        with self._lock:
            if any(t.is_alive() for t in self._threads):
                return
            self._stopping.clear()
            self._threads = [
                threading.Thread(
                    target=self._worker_loop, name=f"{self.name}-worker-{i}", daemon=True
                )
                for i in range(self.workers)
            ]
            for thread in self._threads:
                thread.start()
        log.info("job runner %s started %d worker thread(s)", self.name, self.workers)

    def stop(self, drain: bool = True, timeout: float | None = None) -> bool:
        """Stop claiming jobs.

        Parameters
        ----------
        drain : bool
            Wait for the attempts in progress to finish and be recorded.
            ``False`` returns at once: those attempts still finish in their
            (daemon) threads, or, if the process exits first, are re-run by
            another runner when their lease expires.
        timeout : float, optional
            With ``drain``, seconds to wait at most.

        Returns
        -------
        bool
            ``True`` when every worker thread has ended.
        """
        self._stopping.set()
        self._wake.set()
        with self._lock:
            threads = list(self._threads)
        if drain:
            deadline = None if timeout is None else time.monotonic() + timeout
            for thread in threads:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        alive = [t for t in threads if t.is_alive()]
        with self._lock:
            self._threads = alive
        log.info("job runner %s stopped (%d thread(s) still finishing)", self.name, len(alive))
        return not alive

    @property
    def engine(self) -> Engine:
        """The database engine holding the job table."""
        return self._store.engine

    @property
    def running(self) -> bool:
        """``True`` while worker threads are alive and not told to stop."""
        return not self._stopping.is_set() and any(t.is_alive() for t in self._threads)

    def close(self) -> None:
        """Stop (draining) and close the database if this runner opened it."""
        self.stop(drain=True)
        if self._close_engine is not None:
            self._close_engine()
            self._close_engine = None

    def __enter__(self) -> JobRunner:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        dialect = self._store.engine.dialect.name
        return f"JobRunner({self.name!r}, {dialect}, workers={self.workers})"

    # ------------------------------------------------------------------ internals

    def _token(self) -> str:
        return f"{self.name}/{uuid.uuid4().hex}"

    def _announce(self, job_id: str, task: str, delay_s: float) -> None:
        if self._dispatcher is None:
            self._wake.set()
            return
        try:
            self._dispatcher(job_id, task, max(0.0, delay_s))
        except Exception as exc:  # the job is stored: recover() re-sends it later
            log.warning("job %s could not be dispatched (%s)", job_id, type(exc).__name__)

    def _worker_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                ran = self._run_one()
            except _DATABASE_ERRORS as exc:  # database trouble: keep the worker alive, slowly
                log.warning("job worker: database error (%s); retrying", type(exc).__name__)
                self._stopping.wait(min(self.lease_s, 10 * self.poll_s))
                continue
            except Exception as exc:  # a bug outside any job's attempt: log it, keep serving
                log_unexpected(log, exc, f"job worker {threading.current_thread().name}")
                self._stopping.wait(min(self.lease_s, 10 * self.poll_s))
                continue
            if not ran and self._wake.wait(self.poll_s):
                self._wake.clear()

    def _run_one(self) -> bool:
        token = self._token()
        job = self._store.claim(token, self.lease_s)
        if job is None:
            return False
        self._execute(job, token)
        return True

    def _execute(self, job: Job, token: str) -> None:
        """Run a claimed job's attempt and record its outcome, whatever goes wrong.

        Database errors propagate (nothing can be recorded: the job stays
        leased and is claimable again once the lease expires, as after a
        crash). Any other exception escaping the attempt is a bug of the runner
        (or of a back-off function): its stack is logged and the job fails now,
        instead of waiting out its lease to hit the same bug again.
        """
        try:
            self._execute_claimed(job, token)
        except _DATABASE_ERRORS:
            raise
        except Exception as exc:
            log_unexpected(log, exc, f"job {job.job_id} attempt {job.attempts} (task {job.task})")
            if self._store.fail(job.job_id, token, describe_error(exc), None):
                log.info("job %s attempt %d failed (%s)",
                         job.job_id, job.attempts, type(exc).__name__)
                with self._finished:
                    self._finished.notify_all()
            else:
                log.warning("job %s attempt %d: outcome already recorded or lease lost",
                            job.job_id, job.attempts)

    def _execute_claimed(self, job: Job, token: str) -> None:
        log.info("job %s attempt %d/%d started (task %s)",
                 job.job_id, job.attempts, job.max_attempts, job.task)
        retry_in: float | None = None
        try:
            spec: TaskSpec = self.registry.get(job.task)
        except ObjectNotFound as exc:  # not registered in this process: nothing to run
            recorded = self._store.fail(job.job_id, token, describe_error(exc), None)
            outcome = "failed (task not registered here)"
        else:
            recorded, outcome, retry_in = self._attempt(spec, job, token)
        if not recorded:
            log.warning("job %s attempt %d: lease lost to another worker; outcome discarded",
                        job.job_id, job.attempts)
            return
        log.info("job %s attempt %d %s", job.job_id, job.attempts, outcome)
        with self._finished:
            self._finished.notify_all()
        if retry_in is not None:
            self._announce(job.job_id, job.task, retry_in)

    def _attempt(self, spec: TaskSpec, job: Job, token: str) -> tuple[bool, str, float | None]:
        """Run the task once and record the outcome; (recorded, log text, retry delay)."""
        info = JobInfo(job.job_id, job.task, job.actor, job.attempts)
        try:
            with self._lease_kept(job.job_id, token), running_job(info):
                out = spec.fn(self.context, dict(job.payload))
            try:
                result = json_object({} if out is None else out, "task result", RESULT_MAX_BYTES)
            except TypeError as exc:
                raise JobError(f"task {job.task!r}: {exc}") from None
        except Exception as exc:
            error = describe_error(exc)
            if is_transient(exc, spec.transient) and job.attempts < job.max_attempts:
                retry_in = max(0.0, float(self._backoff(job.attempts)))
                retry_at = self._store.now() + timedelta(seconds=retry_in)
                recorded = self._store.fail(job.job_id, token, error, retry_at)
                return recorded, f"will retry in {retry_in:.2f} s ({type(exc).__name__})", retry_in
            if not isinstance(exc, RadVaultError):  # its message stays out: its stack goes in
                log_unexpected(log, exc, f"job {job.job_id} attempt {job.attempts} "
                                         f"(task {job.task})")
            recorded = self._store.fail(job.job_id, token, error, None)
            return recorded, f"failed ({type(exc).__name__})", None
        return self._store.succeed(job.job_id, token, result), "succeeded", None

    @contextmanager
    def _lease_kept(self, job_id: str, token: str) -> Iterator[None]:
        done = threading.Event()

        def heartbeat() -> None:
            while not done.wait(self.lease_s / 3):
                try:
                    if not self._store.renew(job_id, token, self.lease_s):
                        log.warning("job %s: lease lost while running", job_id)
                        return
                except _DATABASE_ERRORS as exc:  # the next beat tries again
                    log.warning("job %s: lease renewal failed (%s)", job_id, type(exc).__name__)
                except Exception as exc:
                    log_unexpected(log, exc, f"job {job_id}: lease renewal")

        beat = threading.Thread(target=heartbeat, name=f"{self.name}-lease", daemon=True)
        beat.start()
        try:
            yield
        finally:
            done.set()
            beat.join()


