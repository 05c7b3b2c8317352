"""Settings: environment `LLMP_*` first, then `$LLMP_HOME/llmp.toml`, then defaults.

Every path llmp writes lives under one home folder (`LLMP_HOME`, default `~/.llmp`):

    llmp.db      SQLite state (WAL)
    models/      GGUF files (pulled, quantized, synthesized)
    files/       uploaded and generated files (/v1/files)
    adapters/    LoRA adapters
    llmp.toml    settings (optional)
    admin_key    the bootstrap admin key for the CLI (mode 0600)
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from llmp.errors import ConfigError

DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M"


def default_home() -> Path:
    env = os.environ.get("LLMP_HOME")
    return Path(env).expanduser() if env else Path.home() / ".llmp"


def physical_cores() -> int:
    """Physical cores (llama.cpp is slower on hyper-threads); falls back to logical count."""
    try:
        seen = set()
        with open("/proc/cpuinfo") as f:
            phys = core = None
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                elif not line.strip():
                    if core is not None:
                        seen.add((phys, core))
                    phys = core = None
        if seen:
            return max(1, len(seen))
    except OSError:
        pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class Settings:
    home: Path = field(default_factory=default_home)
    host: str = "127.0.0.1"
    port: int = 8000
    default_model: str = DEFAULT_MODEL
    # engine
    n_ctx: int = 0  # 0: slots * per-slot context, capped by the model's trained context
    n_slots: int = 0  # 0: sized from the model and free memory
    slot_ctx: int = 4096  # context per slot when n_ctx is 0
    n_threads: int = 0  # 0: physical cores
    n_gpu_layers: int = -1  # -1: all layers on the GPU when one is there
    n_batch: int = 2048  # token budget of one step (decode + chunked prefill)
    keep_alive: float = 300.0  # seconds an idle model stays loaded
    max_loaded_models: int = 2
    queue_size: int = 256  # waiting requests per model before 503
    # files
    max_file_bytes: int = 512 * 1024 * 1024
    # requests
    max_request_bytes: int = 16 * 1024 * 1024  # a JSON body larger than this: 413
    # server
    shutdown_grace: float = 30.0  # seconds open requests get to finish on SIGTERM/Ctrl-C
    # webhooks: deliveries to loopback/private/link-local addresses (never to metadata ones)
    webhook_allow_private: bool = False
    # misc
    admin_key: str | None = None  # LLMP_ADMIN_KEY
    log_level: str = "info"

    @property
    def db_path(self) -> Path:
        return self.home / "llmp.db"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def files_dir(self) -> Path:
        return self.home / "files"

    @property
    def adapters_dir(self) -> Path:
        return self.home / "adapters"

    @property
    def config_path(self) -> Path:
        return self.home / "llmp.toml"

    @property
    def admin_key_path(self) -> Path:
        return self.home / "admin_key"

    @property
    def threads(self) -> int:
        return self.n_threads if self.n_threads > 0 else physical_cores()

    def ensure_dirs(self) -> "Settings":
        """Make the home's folders; the home, files/ and adapters/ are private to the user
        (0700), whatever the umask."""
        for d in (self.home, self.models_dir, self.files_dir, self.adapters_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        for d in (self.home, self.files_dir, self.adapters_dir):
            private(d, 0o700)
        return self

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


def private(path: Path, mode: int = 0o600) -> None:
    """chmod `path` to `mode` when it exists and is ours (a shared home stays as it is)."""
    try:
        if path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
    except OSError:
        pass


def _coerce(name: str, typ: Any, value: Any) -> Any:
    t = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    try:
        if "Path" in t:
            return Path(str(value)).expanduser()
        if t.startswith("int"):
            return int(value)
        if t.startswith("float"):
            return float(value)
        if t.startswith("bool"):
            return str(value).lower() in ("1", "true", "yes", "on")
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name!r}: {value!r} is not a valid {t.split()[0]}") from None
    return str(value) if value is not None else None


def load_settings(home: Path | str | None = None, **overrides: Any) -> Settings:
    """Build settings from env, llmp.toml and defaults; keyword overrides win over all."""
    home_path = Path(home).expanduser() if home else default_home()
    values: dict[str, Any] = {}
    cfg = home_path / "llmp.toml"
    if cfg.exists():
        try:
            data = tomllib.loads(cfg.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{cfg}: not valid TOML ({e})") from None
        values.update(data.get("llmp", data))
    for f in fields(Settings):
        if f.name == "home":
            continue
        env = os.environ.get(f"LLMP_{f.name.upper()}")
        if env is not None:
            values[f.name] = env
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name: f for f in fields(Settings)}
    kwargs: dict[str, Any] = {"home": home_path}
    for k, v in values.items():
        if k not in known or k == "home":
            continue
        kwargs[k] = _coerce(k, known[k].type, v)
    return Settings(**kwargs)
