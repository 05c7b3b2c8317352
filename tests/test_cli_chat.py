"""`llmp chat` against a running server: streamed replies, commands, history, resume."""
from __future__ import annotations

from llmp.config import load_settings
from llmp.db import chat as db_chat
from llmp.db import open_home
from llmp.server.state import POOL


def test_chat_session(server, cli, monkeypatch, tmp_path):
    monkeypatch.setenv("LLMP_URL", server.url)
    monkeypatch.setenv("LLMP_API_KEY", server.admin_key)
    saved = tmp_path / "chat.md"
    script = "\n".join(["/help", "/system Be brief.", "Hello there", '"""', "line one",
                        "line two", '"""', f"/save {saved}", "/model nope", "/model [/x]", "/nope[/red]",
                        f"/save {tmp_path / 'no-such-dir' / 'x.md'}",
                        "/exit"]) + "\n"
    r = cli("chat", "--model", "tiny", input=script)
    assert r.exit_code == 0, r.stderr
    assert "/clear" in r.stdout and "Be brief." in r.stdout and "'nope' not found" in r.stdout
    # errors that carry rich markup characters are printed as text, not parsed
    assert "'[/x]' not found" in r.stdout and "Unknown command /nope[/red]" in r.stdout
    assert "Error: /save " in r.stdout and "No such file or directory" in r.stdout  # chat went on
    text = saved.read_text()
    assert "Hello there" in text and "line one\nline two" in text and "Be brief." in text
    db = open_home(load_settings())
    session = db_chat.latest_session(db)
    assert [m["role"] for m in db_chat.messages(db, session["id"])] == ["user", "assistant"] * 2
    r = cli("chat", "--resume", input="/clear\n")
    assert r.exit_code == 0 and "Resuming" in r.stderr  # piped: stdout holds replies only
    assert db_chat.messages(db, session["id"]) == []


def test_chat_without_server(cli, monkeypatch):
    monkeypatch.setenv("LLMP_URL", "http://127.0.0.1:9")
    r = cli("chat", input="hi\n")
    assert r.exit_code != 0 and "llmp serve" in r.stderr


def test_chat_unknown_model(server, cli, monkeypatch):
    """`llmp chat --model nope` fails up front: one error line, a non-zero exit, no session."""
    monkeypatch.setenv("LLMP_URL", server.url)
    monkeypatch.setenv("LLMP_API_KEY", server.admin_key)
    r = cli("chat", "--model", "nope", input="hi\n")
    assert r.exit_code != 0 and "'nope' not found" in r.stderr
    assert "Chatting with" not in r.stdout and "Traceback" not in r.stderr
    assert db_chat.latest_session(open_home(load_settings())) is None


def test_chat_piped_is_clean_and_uses_the_loaded_model(server, cli, monkeypatch):
    """Piped: no prompts, each reply on its own line(s) on stdout, the banner on stderr; the
    default model is the one the server has loaded; a first MESSAGE argument is sent."""
    monkeypatch.setenv("LLMP_URL", server.url)
    monkeypatch.setenv("LLMP_API_KEY", server.admin_key)
    server.run(server.app[POOL].get("tiny"))
    r = cli("chat", "first", "--max-tokens", "16", input="")
    assert r.exit_code == 0, r.stderr
    assert "Chatting with tiny" in r.stderr and ">>>" not in r.stdout
    assert "Chatting" not in r.stdout and r.stdout.endswith("\n")
    session = db_chat.latest_session(open_home(load_settings()))
    replies = [m["content"] for m in db_chat.messages(open_home(load_settings()), session["id"])
               if m["role"] == "assistant"]
    assert len(replies) == 1 and r.stdout == "".join(f"{t}\n" for t in replies)
