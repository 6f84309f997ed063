"""splitmesh coordinator: an untrusted helper anyone may run.

It indexes the contracts' events into SQLite (resumable, reorg-safe), answers queries about jobs, nodes
and payments (CLI and HTTP JSON API), serves the explorer page, and runs keeper duties (finalize, cancel,
open and resolve audits). It never holds user data, funds or other parties' keys: everything it shows
can be checked against the chain, and nothing depends on it for safety.
"""
