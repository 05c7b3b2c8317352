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

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

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


class PaymentMethod(BaseModel):
    """`[billing.payment_method]`: shown as is by /v1/usage/billing (llmp never invents one)."""
    model_config = ConfigDict(extra="forbid")
    type: str
    last_four: str | None = None
    expires: str | None = None


class Billing(BaseModel):
    """The `[billing]` table of llmp.toml."""
    model_config = ConfigDict(extra="forbid")
    payment_method: PaymentMethod | None = None


class Settings(BaseSettings):
    """Every setting, from (highest first) keyword arguments, the environment (`LLMP_<NAME>`,
    e.g. LLMP_PORT=9000), `$LLMP_HOME/llmp.toml` (keys at the top level or under `[llmp]`,
    plus a `[billing]` table), then the defaults below. An unknown key in llmp.toml or a value
    that does not parse (a port that is not a number, a bool that is not true/false/1/0/yes/
    no/on/off) is a ConfigError naming the key and where it was set; nothing is ignored."""

    model_config = SettingsConfigDict(env_prefix="LLMP_", extra="forbid",
                                      validate_assignment=True, validate_default=False)

    home: Path = Field(default_factory=default_home)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    default_model: str = DEFAULT_MODEL
    # engine
    n_ctx: int = Field(0, ge=0)  # 0: slots * per-slot context, capped by the model's trained context
    n_slots: int = Field(0, ge=0)  # 0: sized from the model and free memory
    slot_ctx: int = Field(4096, gt=0)  # context per slot when n_ctx is 0
    n_threads: int = Field(0, ge=0)  # 0: physical cores
    n_gpu_layers: int = -1  # -1: all layers on the GPU when one is there
    n_batch: int = Field(2048, gt=0)  # token budget of one step (decode + chunked prefill)
    keep_alive: float = 300.0  # seconds an idle model stays loaded (< 0: forever)
    max_loaded_models: int = Field(2, gt=0)
    queue_size: int = Field(256, ge=0)  # waiting requests per model before 503
    # files
    max_file_bytes: int = Field(512 * 1024 * 1024, gt=0)
    # requests
    max_request_bytes: int = Field(16 * 1024 * 1024, gt=0)  # a JSON body larger than this: 413
    # server
    shutdown_grace: float = Field(30.0, ge=0)  # seconds open requests get to finish on SIGTERM/Ctrl-C
    # webhooks: deliveries to loopback/private/link-local addresses (never to metadata ones)
    webhook_allow_private: bool = False
    # moderations (POST /v1/moderations): the guard model the OpenAI moderation model names
    # resolve to (None: the first registered guard, see `llmp models set-guard`); a category
    # is flagged when the guard's verdict names it or its score reaches its threshold
    moderation_model: str | None = None
    moderation_threshold: float = 0.5
    moderation_thresholds: str = ""  # per-category overrides: "violence=0.3,hate=0.6"
    # misc
    admin_key: str | None = None  # LLMP_ADMIN_KEY
    log_level: str = "info"
    # [billing] in llmp.toml
    billing: Billing = Field(default_factory=Billing)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise ConfigError(_describe(e, values)) from None

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, v: Path) -> Path:
        return v.expanduser()

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, HomeTomlSource(settings_cls, init_settings)

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

    def ensure_dirs(self) -> Settings:
        """Make the home's folders; the home, files/ and adapters/ are private to the user
        (0700), whatever the umask."""
        for d in (self.home, self.models_dir, self.files_dir, self.adapters_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        for d in (self.home, self.files_dir, self.adapters_dir):
            private(d, 0o700)
        return self

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes` applied (each one validated; no source is read again)."""
        copy = self.model_copy(deep=False)
        for name, value in changes.items():
            if name not in type(self).model_fields:
                raise ConfigError(f"unknown setting {name!r}")
            try:
                setattr(copy, name, value)
            except ValidationError as e:
                raise ConfigError(_describe(e, changes)) from None
        return copy


def _toml_path(home: Path) -> Path:
    return home / "llmp.toml"


class HomeTomlSource(PydanticBaseSettingsSource):
    """`llmp.toml` in the home the other sources name (keyword argument, then LLMP_HOME, then
    ~/.llmp): keys at the top level or under `[llmp]` (not both for one key); `home` may not
    be set there."""

    def __init__(self, settings_cls: type[BaseSettings], init: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        home = init.init_kwargs.get("home") if isinstance(init, InitSettingsSource) else None
        self.path = _toml_path(Path(home).expanduser() if home else default_home())

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the whole file

    def __call__(self) -> dict[str, Any]:
        return read_toml(self.path)


def read_toml(path: Path) -> dict[str, Any]:
    """The settings in one llmp.toml (empty when there is none); ConfigError when it is not
    valid TOML, sets `home`, or sets a key both at the top level and under [llmp]."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    section = data.pop("llmp", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: 'llmp' must be a table ([llmp])")
    both = sorted(set(section) & set(data))
    if both:
        raise ConfigError(f"{path}: {', '.join(both)} set both at the top level and in [llmp]")
    values = {**data, **section}
    if "home" in values:
        raise ConfigError(f"{path}: 'home' cannot be set in the home's own llmp.toml "
                          "(use LLMP_HOME)")
    return values


def _describe(e: ValidationError, init: dict[str, Any]) -> str:
    """One line per bad setting: its name, what is wrong, and where it was set."""
    home = init.get("home")
    path = _toml_path(Path(home).expanduser() if home else default_home())
    lines = []
    for err in e.errors():
        loc = [str(x) for x in err["loc"]]
        name = loc[0] if loc else "?"
        key = ".".join(loc) or "?"
        env = f"LLMP_{name.upper()}"
        if name in init:
            where = "given"
        elif env in os.environ:
            where = f"from the environment ({env})"
        else:
            where = f"in {path}"
        if err["type"] == "extra_forbidden":
            known = ", ".join(sorted(Settings.model_fields))
            lines.append(f"unknown setting {key!r} {where} (known: {known})")
        else:
            value = err.get("input")
            lines.append(f"setting {key!r} {where}: {value!r} is not valid ({err['msg']})")
    return "; ".join(lines)


def private(path: Path, mode: int = 0o600) -> None:
    """chmod `path` to `mode` when it exists and is ours (a shared home stays as it is)."""
    try:
        if path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
    except OSError:
        pass


def load_settings(home: Path | str | None = None, **overrides: Any) -> Settings:
    """Build settings from env, llmp.toml and defaults; keyword overrides (None: not given)
    win over all."""
    values = {k: v for k, v in overrides.items() if v is not None}
    if home:
        values["home"] = Path(home).expanduser()
    return Settings(**values)
