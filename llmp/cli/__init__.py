"""Command-line interface: `llmp` (typer); `main.py` assembles one module per group."""
