"""`llmp tui`: a live Textual dashboard of a running llmp server.

A client of the server's HTTP API only (through `llmp.client`, found by `llmp.discovery`): it
imports neither the server nor the CLI, nor services, engine or db, so it works against a
remote llmp as well (tests/test_layers.py and the import-linter contracts keep it so).
"""
