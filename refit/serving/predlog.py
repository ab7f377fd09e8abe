"""The prediction log: what was served, written to ``prediction_log`` off the request path, and
kept while the database is away."""

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

    def add(self, version: str, texts: list[str], records: list[dict]) -> None:
        """Queue one row per scored text (its SHA-256 and length, never the text itself).

        Args:
            version: the model version that scored them.
            texts: the texts as scored.
            records: the predictor's records for them, in order.
        """
        rows = []
        for text_, record in zip(texts, records, strict=True):
            probabilities = {k[2:]: v for k, v in record.items() if k.startswith("p_")}
            regression = not probabilities
            rows.append(
                {
                    "v": version,
                    "h": hashlib.sha256(text_.encode()).hexdigest(),
                    "n": len(text_),
                    "s": record["prediction"] if regression else None,
                    "l": None if regression else record["prediction"],
                    "p": json.dumps(probabilities) if probabilities else None,
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
        """Write the queued rows now; when the database is away they stay queued.

        Returns:
            How many rows were written.
        """
        with self._lock:
            rows, self.rows = self.rows, []
        if not rows:
            return 0
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO prediction_log (model_version, text_sha256, text_chars, satisfaction, label,"
                        " probabilities) VALUES (:v, :h, :n, :s, :l, CAST(:p AS JSONB))"
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
