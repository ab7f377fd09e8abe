"""The serving app's routes, a module per group; :func:`refit.serving.app.create_app` assembles them.

- :mod:`~refit.serving.routes.predict`: ``POST /predict``.
- :mod:`~refit.serving.routes.explain`: ``POST /explain``.
- :mod:`~refit.serving.routes.models`: ``POST /reload`` and ``GET /version``: the served models.
- :mod:`~refit.serving.routes.health`: ``GET /healthz`` and ``GET /readyz``.
- :mod:`~refit.serving.routes.metrics`: ``GET /metrics`` and the Prometheus series behind it.
- :mod:`~refit.serving.routes.shared`: what the routes share: the bearer-token check and the
  app's state (``app.state``) as dependencies.
"""
