"""Fault injection for ``pipeline chaos`` (Jepsen's "total queue" check on this pipeline).

Test-support code: it drives the real pipeline from outside and breaks things around it
(processes, deliveries, the network, the database, the objects). No production module imports
it; a test makes sure of that.
"""
