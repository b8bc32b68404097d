"""Janus (multi-face) benchmark: known-answer lab, metrics for real runs, runner and report.

* :mod:`.stats` — Wilson intervals and per-asset aggregation.
* :mod:`.modes` — which candidate views each query gets in the reference-object prior's modes
  (unconditioned, view-binned, camera-conditioned, multi-view-joint), shared by the 1-D lab and
  the 3-D ``reference-object-guidance``.
* :mod:`.measures` — exact, rotation-invariant Janus measures against a known object.
* :mod:`.lab` — the reference-object lab (1-D turntable of the bundled object);
  ``python launch.py --bench lab``.
* :mod:`.metrics`, :mod:`.report` — metrics for real runs, the runner and its report;
  ``python launch.py --bench janus``.
"""
