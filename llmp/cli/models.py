"""`llmp models ...` (placeholder: filled in by the registry work)."""
import typer

app = typer.Typer(help="Pull, add, list, quantize and synthesize GGUF models.", no_args_is_help=True)
