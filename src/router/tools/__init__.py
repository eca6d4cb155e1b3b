"""Offline commands for operators: `router report` (spend from the ledger) and `router simulate`
(a month of synthetic traffic through the real decision, to plan fleets). Not on the request path.
"""
