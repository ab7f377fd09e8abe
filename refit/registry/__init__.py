"""The model registry: versions in the object store and in ``model_versions``.

- :mod:`refit.registry.store`: the object store backends (a folder, S3).
- :mod:`refit.registry.layout`: where a version and the champion pointer live in the store.
- :mod:`refit.registry.versions`: publishing a checkpoint as an immutable version, fetching and
  checking one out, withdrawing one.
- :mod:`refit.registry.pointer`: the champion pointer, moved by compare-and-swap on its ETag.
- :mod:`refit.registry.table`: the registry table's rows, lineage and garbage collection.
- :mod:`refit.registry.promotion`: recording a gate decision (moving the champion), rollback.
"""
