"""The one binding registry: the footer, `?` help and the ctrl+p palette are all generated
from the bindings active on the screen (the app's GLOBAL ones below plus each view's own,
declared on the view class with the permission each action needs)."""
from __future__ import annotations

from collections.abc import Iterator

from textual.binding import Binding
from textual.screen import Screen

GLOBAL: list[Binding] = [
    Binding("q", "quit", "Quit"),
    Binding("question_mark", "help", "Help"),
    Binding("slash", "filter", "Filter"),
    Binding("escape", "esc_back", "Back", show=False),
    Binding("r", "refresh", "Refresh", show=False),
    Binding("right_square_bracket", "next_view", "Next screen", show=False),
    Binding("left_square_bracket", "prev_view", "Previous screen", show=False),
]


def active(screen: Screen) -> Iterator[tuple[str, Binding]]:
    """(key to display, binding) of every enabled, described binding on `screen`."""
    seen: set[str] = set()
    for _key, ab in screen.active_bindings.items():
        b = ab.binding
        if not ab.enabled or not b.description or b.action in seen:
            continue
        seen.add(b.action)
        yield screen.app.get_key_display(b), b


def help_text(screen: Screen, views: list[tuple[str, str]]) -> str:
    """The help page: the screens' number keys, then every active binding."""
    lines = ["[b]Screens[/b]"]
    for key, title in views:
        lines.append(f"  [b]{key}[/b]  {title}")
    lines += ["", "[b]Keys here[/b]"]
    for key, b in sorted(active(screen), key=lambda kb: kb[1].description):
        if b.action.startswith("view("):
            continue
        lines.append(f"  [b]{key:>8}[/b]  {b.description}")
    lines += ["", "ctrl+p opens the command palette; esc goes back; tabs are clickable."]
    return "\n".join(lines)
