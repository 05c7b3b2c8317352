"""`llmp doctor` (placeholder)."""


def doctor() -> None:
    """Check the installation: Python, llama.cpp build and GPU offload, home, DB, disk."""
