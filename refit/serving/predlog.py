"""The prediction log: what was scored, written to ``prediction_log`` off the request path, and
kept while the database is away.

Each row names the model version and its role (``champion`` or ``candidate``), whether it was the
answer returned (``served``; a model scoring unseen in shadow is not), the live rollout, the
request's id and the item's ids (what later feedback joins on), the model call's duration and how
many items that call scored (``call_items``: the call's time per item is ``latency_ms / call_items``),
and, for a call that failed, the error instead of a prediction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading

from sqlalchemy import text

log = logging.getLogger("refit.serve")


class PredictionLog:
    """Predictions written to ``prediction_log`` in batches, off the request path.

    A request only appends to a buffer; a thread writes it every ``flush_s`` seconds or
    ``batch`` rows. If the database is down the rows wait (up to ``cap``; beyond that the oldest
    are dropped and counted), and serving never fails because of logging.
    """

    def __init__(self, engine, flush_s: float = 2.0, batch: int = 500, cap: int = 100_000):
        self.engine, self.flush_s, self.batch, self.cap = engine, flush_s, batch, cap
        self.rows: list[dict] = []
        self.written = self.dropped = 0
        self._lock, self._wake, self._stop = threading.Lock(), threading.Event(), threading.Event()
        self._writing = threading.Lock()  # one flush at a time: a flush waits for the one in progress
        self._thread = threading.Thread(target=self._run, name="refit-prediction-log", daemon=True)

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the writer thread and write what is left (if the database is there)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self.flush()

    def add(
        self,
        version: str,
        texts: list[str],
        records: list[dict] | None,
        *,
        role: str = "champion",
        served: bool = True,
        rollout_id: int | None = None,
        request_id: str | None = None,
        ids: list[dict] | None = None,
        latency_ms: float | None = None,
        call_items: int | None = None,
        error: str | None = None,
    ) -> None:
        """Queue one row per scored text (its SHA-256 and length, never the text itself).

        Args:
            version: the model version that scored them.
            texts: the texts as scored.
            records: the predictor's records for them, in order; None when the call failed.
            role: ``champion`` or ``candidate``.
            served: whether these predictions were the answer returned.
            rollout_id: the live rollout, if any.
            request_id: the request they belong to.
            ids: per text, its ``feedback_id``, ``user_id`` and ``item_id`` (any may be missing).
            latency_ms: the duration of the model call that scored them.
            call_items: how many items that call scored (it may hold other requests' items too).
            error: what the failed call raised (the rows then have no prediction).
        """
        if records is not None and len(records) != len(texts):
            raise ValueError(f"{len(records)} records for {len(texts)} texts")
        rows = []
        for i, text_ in enumerate(texts):
            record = records[i] if records is not None else {}
            probabilities = {k[2:]: v for k, v in record.items() if k.startswith("p_")}
            regression = not probabilities
            item = ids[i] if ids else {}
            rows.append(
                {
                    "v": version,
                    "h": hashlib.sha256(text_.encode()).hexdigest(),
                    "n": len(text_),
                    "s": record.get("prediction") if regression else None,
                    "l": None if regression else record["prediction"],
                    "p": json.dumps(probabilities) if probabilities else None,
                    "role": role,
                    "served": served,
                    "rollout": rollout_id,
                    "request": _text(request_id),
                    "feedback": _text(item.get("feedback_id")),
                    "user": _text(item.get("user_id")),
                    "item": _text(item.get("item_id")),
                    "ms": latency_ms,
                    "c": call_items,
                    "error": _text(error),
                }
            )
        with self._lock:
            self.rows.extend(rows)
            if len(self.rows) > self.cap:
                self.dropped += len(self.rows) - self.cap
                del self.rows[: len(self.rows) - self.cap]
            if len(self.rows) >= self.batch:
                self._wake.set()

    def flush(self) -> int:
        """Write the queued rows now; when the database is away they stay queued. A write in
        progress (the writer thread's) is waited for, so every row queued before the call is
        committed, or queued again, when it returns.

        Returns:
            How many rows were written.
        """
        with self._writing:
            return self._write()

    def _write(self) -> int:
        with self._lock:
            rows, self.rows = self.rows, []
        if not rows:
            return 0
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO prediction_log (model_version, text_sha256, text_chars, satisfaction, label,"
                        " probabilities, role, served, rollout_id, request_id, feedback_id, user_id, item_id,"
                        " latency_ms, call_items, error) VALUES (:v, :h, :n, :s, :l, CAST(:p AS JSONB), :role,"
                        " :served, :rollout, :request, :feedback, :user, :item, :ms, :c, :error)"
                    ),
                    rows,
                )
        except Exception as exc:  # the database is away: keep the rows for the next try
            log.warning("prediction log not written (%d rows kept): %s", len(rows), str(exc).splitlines()[0])
            with self._lock:
                self.rows[:0] = rows
            return 0
        self.written += len(rows)
        return len(rows)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_s)
            self._wake.clear()
            self.flush()


def _text(value: str | None) -> str | None:
    # Postgres text cannot hold NUL: one in an id would keep its whole batch from being written.
    return value.replace("\x00", "\ufffd") if value else value
