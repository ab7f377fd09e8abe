"""Serving the champion (and a live rollout's candidate beside it): ``refit serve`` and ``refit predict``.

- :mod:`refit.serving.app`: the FastAPI app assembled (error handlers, request metrics, lifespan) and
  :func:`~refit.serving.app.serve`.
- :mod:`refit.serving.routes`: the app's routes, a module per group, their limits and auth.
- :mod:`refit.serving.follower`: the champion and candidate followers: load, verify, warm up and swap the
  version each pointer names.
- :mod:`refit.serving.router`: which model answers a request (canary, sticky per user), the other's
  shadow scoring off the live path, and both models' evidence (prediction log, per-model metrics).
- :mod:`refit.serving.batching`: concurrent requests gathered into one model call.
- :mod:`refit.serving.predlog`: the prediction log, written off the request path.
- :mod:`refit.serving.bodies`: the request and response bodies.
- :mod:`refit.serving.scoring`: batch scoring of a feedback file.

Serving never imports the trainer.
"""
