"""Run directories, manifests, metrics logging, atomic checkpoints, resume, seeding and devices.

Modules (import them directly; this package imports nothing heavy):

* :mod:`~medssl.runtime.atomic`: atomic file writes.
* :mod:`~medssl.runtime.rundir`: the ``runs/<name>/`` layout, new / resume / overwrite.
* :mod:`~medssl.runtime.manifest`: versions, git commit, host, data fingerprints.
* :mod:`~medssl.runtime.seeding`: seeding and RNG-state capture for exact resume.
* :mod:`~medssl.runtime.checkpoint`: atomic checkpoints and their manager.
* :mod:`~medssl.runtime.metrics_log`: ``metrics.csv`` and TensorBoard.
* :mod:`~medssl.runtime.fabric`: Lightning Fabric from a :class:`~medssl.config.RuntimeConfig`.
* :mod:`~medssl.runtime.progress`: progress bars and plain progress lines.
* :mod:`~medssl.runtime.session`: :func:`~medssl.runtime.session.start_run`, the start of every training run.
"""
