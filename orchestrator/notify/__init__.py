"""Notifications: tell people when a job ends, a quota runs low or a login is about to expire.

``events.py`` (what an event is; written to the outbox in the transaction of the
state change), ``watch.py`` (events that come from looking: quota, logins, waiting
jobs), ``channels.py`` (webhook, ntfy, Slack, Discord, email, command: each one's
payload format and send), ``outbox.py`` (claiming, recording and pruning rows) and
``delivery.py`` (what a tick calls at its end). See docs/notifications.md.
"""
