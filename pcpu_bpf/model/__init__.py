"""The model every stage shares: events, tables, the reference aggregator, the Snapshot.

Plain data and pure functions, no I/O: the live side and the simulator produce what is
defined here, and the exporter and pcpu-top consume it.
"""
