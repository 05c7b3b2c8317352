"""Modal screens: confirm, a small form, a secret shown once, a text viewer, help."""
from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


class ConfirmScreen(ModalScreen[bool]):
    """y / enter: True; n / esc: False."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n", "answer(False)", "No"),
                Binding("escape", "answer(False)", "Back")]

    def __init__(self, message: str):
        super().__init__()
        self.message = message

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.message, id="confirm-message")
            yield Label("[b]y[/b] yes   [b]n[/b] / esc no", classes="hint")
            yield Button("Yes", id="yes", variant="error")
            yield Button("No", id="no")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class FormScreen(ModalScreen["dict[str, str] | None"]):
    """Fields (name, label, default); enter on the last field (or Save) answers the values."""

    BINDINGS = [Binding("escape", "cancel", "Back")]

    def __init__(self, title: str, fields: Sequence[tuple[str, str, str]]):
        super().__init__()
        self.title_text = title
        self.fields = list(fields)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"[b]{self.title_text}[/b]")
            for name, label, default in self.fields:
                yield Label(label)
                yield Input(value=default, id=f"field-{name}")
            yield Button("Save", id="save", variant="primary")

    def values(self) -> dict[str, str]:
        return {name: self.query_one(f"#field-{name}", Input).value.strip()
                for name, _, _ in self.fields}

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        inputs = list(self.walk_children(Input))
        i = inputs.index(event.input)
        if i + 1 < len(inputs):
            inputs[i + 1].focus()
        else:
            self.dismiss(self.values())

    @on(Button.Pressed, "#save")
    def _save(self) -> None:
        self.dismiss(self.values())

    def action_cancel(self) -> None:
        self.dismiss(None)


class SecretScreen(ModalScreen[None]):
    """A secret shown once, with a copy action."""

    BINDINGS = [Binding("c", "copy", "Copy"), Binding("escape,enter", "close", "Close")]

    def __init__(self, title: str, secret: str):
        super().__init__()
        self.title_text = title
        self.secret = secret

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"[b]{self.title_text}[/b]")
            yield Static(Text(self.secret), id="secret")
            yield Label("This secret is shown once: store it now.  [b]c[/b] copy   "
                        "[b]esc[/b] close", classes="hint")

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.secret)
        self.notify("Copied to the clipboard")

    def action_close(self) -> None:
        self.dismiss(None)


class TextScreen(ModalScreen[None]):
    """A scrollable text (help, line errors, events)."""

    BINDINGS = [Binding("escape,q", "close", "Back")]

    def __init__(self, title: str, body: str | Text):
        super().__init__()
        self.title_text = title
        self.body = body

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label(f"[b]{self.title_text}[/b]")
            with VerticalScroll():
                yield Static(self.body, id="text-body")

    def action_close(self) -> None:
        self.dismiss(None)
