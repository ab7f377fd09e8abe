"""Notifications: what refit tells people, and where it is delivered.

Every event is a notice (:mod:`refit.notify.message`), built by a pure function from what the loop
already returns (:mod:`refit.notify.notices`), with links to the run and its stored reports
(:mod:`refit.notify.links`). A notice is delivered as a Slack message or a plain JSON event to the
configured targets, URLs or saved Prefect blocks (:mod:`refit.notify.delivery`); a notification
that fails is logged (without its URL or token) and never fails the caller. The server-side failure
alert of deployments/automations.yaml is installed by :mod:`refit.notify.automations`.
"""
