"""Alerting: one scrubbed message (``message``, ``scrub``), three channels (``sns``, ``slack``, ``smtp``),
the channel list for callbacks (``factory.alert_notifiers``) and run-time deadline alerts (``deadline``).

Import from the submodules; this package stays empty so that the pure builders import without Airflow.
"""
