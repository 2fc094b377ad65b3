"""The procedure package: loading, running and supervising observing scripts.

Public modules: :mod:`.application` (the service facade), :mod:`.domain` (scripts, states,
processes), :mod:`.environment`, :mod:`.gitmanager` and :mod:`.ui` (request models).
"""
