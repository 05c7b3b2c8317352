"""`llmp models pull REPO[:QUANT]`: download a GGUF model from a Hugging Face hub and register it.

* The repo's files come from one `model_info(files_metadata=True)` call (names, sizes, LFS
  sha256, commit and model card); every file is then fetched at that commit, so the parts of
  a split model always belong together.
* QUANT is matched case-insensitively against the quant tag in each file name (`Q4_K_M`,
  `IQ4_XS`, `F16`, `UD-Q4_K_XL`, ...), then as a substring of the file name (so an exact file
  name works too). Without QUANT: the only model in the repo, else `Q4_K_M` when on offer (as
  llama.cpp's `-hf` does), else an error listing what is on offer. Split models
  (`-00001-of-0000N.gguf`) are one offer; `mmproj` and `imatrix` files are not models.
* Files land in `$LLMP_HOME/models/<owner>/<repo>/`. A download in progress is
  `<file>.<etag>.part`: an interrupted pull (dropped connection, Ctrl-C, a crash) resumes from
  there with a ranged GET when run again; a partial file of another version is discarded.
  A dropped connection is also retried in place by huggingface_hub's `http_get`.
* Every file is checked against the hub's sha256 before the model is registered; nothing is
  registered unless every part is complete and verified.
* `HF_ENDPOINT` (read at call time), `HF_TOKEN` and `--revision` are honoured.

Model id of a pull: `<repo name minus -GGUF>:<quant>` in lower case (see `registry`); the
spec `owner/repo:QUANT` becomes an alias, the hub repo and file(s) go to `source`.
"""
from __future__ import annotations

import functools
import hashlib
import re
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from llmp.config import Settings
from llmp.db import models as db_models
from llmp.errors import InvalidRequestError, ModelError, NotFoundError
from llmp.models import gguf_meta, registry
from llmp.models.hf import _hub_errors, hub_endpoint

# phase text ("downloading x.gguf", "verifying"), bytes done, bytes total
Progress = Callable[[str, int, int], None]

DEFAULT_QUANT = "Q4_K_M"
QUANT_RE = re.compile(
    r"(?<![A-Za-z0-9])((?:UD-)?(?:I?Q\d(?:_[A-Z0-9]+)*|TQ\d_\d|MXFP4(?:_MOE)?|NVFP4|BF16|FP?16|FP?32))"
    r"(?![A-Za-z0-9])", re.IGNORECASE)
_NOT_MODELS = ("mmproj", "imatrix")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class RemoteFile:
    path: str  # path in the repo
    size: int | None
    sha256: str | None  # LFS sha256 when the hub knows it


@dataclass(frozen=True)
class Offer:
    """One model on offer in a repo: a quant and its file(s) (several for a split model)."""

    quant: str
    files: tuple[RemoteFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size or 0 for f in self.files)

    def describe(self, label: str | None = None) -> str:
        parts = f", {len(self.files)} parts" if len(self.files) > 1 else ""
        size = f"{self.size / 1e9:.2f} GB" if self.size >= 1e9 else f"{self.size / 1e6:.1f} MB"
        return f"{label or self.quant} ({size}{parts})"


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M' -> ('Qwen/Qwen2.5-0.5B-Instruct-GGUF', 'Q4_K_M')."""
    s = spec.strip()
    for prefix in ("https://huggingface.co/", "huggingface.co/", "hf.co/"):
        if s.startswith(prefix):
            s = s[len(prefix):]
    repo, _, quant = s.partition(":")
    parts = repo.strip("/").split("/")
    if len(parts) != 2 or not all(re.fullmatch(r"[\w.-]+", p) for p in parts):
        raise InvalidRequestError(f"{spec!r} is not a hub repo: use OWNER/REPO[:QUANT], e.g. "
                                  "Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M", param="model")
    return "/".join(parts), (quant.strip() or None)


def quant_tag(path: str) -> str | None:
    """The quant tag of a GGUF file name (or of its folder): 'x-Q4_K_M-00001-of-00002.gguf' -> 'Q4_K_M'."""
    p = Path(path)
    m = gguf_meta.SPLIT_RE.match(p.name)
    stem = m.group("prefix") if m else p.name[: -len(".gguf")]
    for text in (stem, p.parent.name):
        found = QUANT_RE.findall(text)
        if found:
            return found[-1].upper()
    return None


def list_offers(files: list[RemoteFile]) -> list[Offer]:
    """Group a repo's GGUF files into offers (split parts together), sorted by quant."""
    groups: dict[str, list[RemoteFile]] = {}
    for f in files:
        name = Path(f.path).name
        if not name.lower().endswith(".gguf") or any(w in name.lower() for w in _NOT_MODELS):
            continue
        m = gguf_meta.SPLIT_RE.match(name)
        key = str(Path(f.path).parent / m.group("prefix")) if m else f.path
        groups.setdefault(key, []).append(f)
    offers = [Offer(quant_tag(fs[0].path) or Path(key).name.removesuffix(".gguf"),
                    tuple(sorted(fs, key=lambda f: f.path)))
              for key, fs in groups.items()]
    return sorted(offers, key=lambda o: (o.quant.upper(), o.files[0].path))


def choose(offers: list[Offer], quant: str | None, repo: str) -> Offer:
    """The offer QUANT names (see the module doc); errors list what is on offer."""
    if not offers:
        raise NotFoundError(f"no GGUF file in {repo}: llmp serves GGUF models; look for a "
                            "-GGUF repo of this model", param="model")
    tags = Counter(o.quant.upper() for o in offers)
    # a quant offered twice is shown by file name, which also picks it
    on_offer = ", ".join(o.describe(None if tags[o.quant.upper()] == 1 else o.files[0].path)
                         for o in offers)
    if quant is None:
        if len(offers) == 1:
            return offers[0]
        default = [o for o in offers if o.quant.upper() == DEFAULT_QUANT]
        if len(default) == 1:
            return default[0]
        raise InvalidRequestError(f"{repo} offers several models; pick one with "
                                  f"{repo}:QUANT. On offer: {on_offer}", param="model")
    q = quant.upper()
    matches = [o for o in offers if o.quant.upper() == q] or \
        [o for o in offers if any(q.lower() in f.path.lower() for f in o.files)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise NotFoundError(f"{repo} has no {quant} GGUF. On offer: {on_offer}", param="model")
    names = ", ".join(o.files[0].path for o in matches)
    raise InvalidRequestError(f"{quant!r} is ambiguous in {repo}: it matches {names}. "
                              "Name the file to pick one", param="model")


class _Bar:
    """What huggingface_hub's `http_get` wants as `tqdm_class`: a context manager with
    `update(n)`; it forwards the absolute byte count of the file."""

    def __init__(self, *, report: Callable[[int], None], initial: int = 0, **_: Any) -> None:
        self.n = initial
        self._report = report
        report(self.n)

    def update(self, n: int = 1) -> None:
        self.n += n
        self._report(self.n)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _download(url: str, dest: Path, size: int | None, *, report: Callable[[int], None]) -> None:
    """Fetch `url` into `dest` through `<dest>.<etag>.part`, resuming a partial download."""
    from huggingface_hub import get_hf_file_metadata
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    meta = get_hf_file_metadata(url)
    size = meta.size if meta.size is not None else size
    if dest.exists() and size is not None and dest.stat().st_size == size:
        report(size)
        return
    tag = re.sub(r"[^0-9A-Za-z]", "", meta.etag or "")[:16] or "noetag"
    part = dest.with_name(f"{dest.name}.{tag}.part")
    for stale in dest.parent.glob(f"{dest.name}.*.part"):
        if stale != part:
            stale.unlink()
    done = part.stat().st_size if part.exists() else 0
    if size is not None and done > size:
        part.unlink()
        done = 0
    headers = build_hf_headers()
    headers["Accept-Encoding"] = "identity"
    with open(part, "ab") as f:
        http_get(meta.location, f, resume_size=done, headers=headers, expected_size=size,
                 displayed_filename=dest.name,
                 tqdm_class=functools.partial(_Bar, report=report))  # type: ignore[arg-type]
    part.replace(dest)


def _verify(paths: list[Path], files: tuple[RemoteFile, ...], progress: Progress | None,
            total: int) -> str:
    """Check each file against the hub's sha256; return the model's sha256 (parts in order)."""
    whole = hashlib.sha256()
    done = 0
    for path, remote in zip(paths, files):
        one = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                one.update(chunk)
                whole.update(chunk)
                done += len(chunk)
                if progress:
                    progress("verifying", done, total)
        if remote.sha256 and _SHA256_RE.match(remote.sha256) and one.hexdigest() != remote.sha256:
            path.unlink()
            raise ModelError(f"{remote.path}: checksum mismatch (the download was corrupted); "
                             "run the command again")
    return whole.hexdigest()


def _hf_source(info: gguf_meta.GGUFInfo, card_base: Any, repo: str) -> str | None:
    """The safetensors repo this GGUF belongs to, for fine-tuning (see the registry doc)."""
    if isinstance(card_base, list):
        card_base = card_base[0] if card_base else None
    owner, name = repo.split("/")
    stripped = re.sub(r"[-_.]gguf$", "", name, flags=re.IGNORECASE)
    return (info.source_repo or (card_base if isinstance(card_base, str) else None)
            or (f"{owner}/{stripped}" if stripped != name else None) or info.base_model_repo)


def pull(db: Database, settings: Settings, spec: str, *, revision: str | None = None,
         model_id: str | None = None, provider: str | None = None,
         progress: Progress | None = None) -> dict:
    """Download the GGUF model `spec` names (OWNER/REPO[:QUANT]) and register it."""
    from huggingface_hub import HfApi, hf_hub_url

    repo, quant = parse_spec(spec)
    endpoint = hub_endpoint()
    owner, name = repo.split("/")
    dest_dir = settings.models_dir / owner / name
    with _hub_errors(repo, revision, endpoint):
        repo_info = HfApi(endpoint=endpoint).model_info(repo, revision=revision,
                                                        files_metadata=True)
        files = [RemoteFile(s.rfilename, s.lfs.size if s.lfs else s.size,
                            s.lfs.sha256 if s.lfs else None) for s in repo_info.siblings or []]
        offer = choose(list_offers(files), quant, repo)
        commit = repo_info.sha or revision or "main"
        new_id = registry.check_id(model_id or registry.slugify(
            f"{re.sub(r'[-_.]gguf$', '', name, flags=re.IGNORECASE)}:{offer.quant}"))
        existing = db_models.get(db, new_id)
        paths = [dest_dir / f.path for f in offer.files]
        if existing and Path(existing["path"]) != paths[0]:
            raise InvalidRequestError(f"model id {new_id!r} is already registered for "
                                      f"{existing['path']}; pass --name", param="name")
        dest_dir.mkdir(parents=True, exist_ok=True)
        _check_space(paths, offer.files, dest_dir)
        total = offer.size
        base = 0
        for path, remote in zip(paths, offer.files):
            path.parent.mkdir(parents=True, exist_ok=True)
            phase = f"downloading {Path(remote.path).name}"

            def report(n: int, base: int = base, phase: str = phase) -> None:
                if progress:
                    progress(phase, base + n, total)

            _download(hf_hub_url(repo, remote.path, revision=commit, endpoint=endpoint), path,
                      remote.size, report=report)
            base += path.stat().st_size
        sha = _verify(paths, offer.files, progress, total)
    try:
        info = gguf_meta.read(paths[0])
    except ModelError as e:
        for p in paths:
            p.unlink(missing_ok=True)
        raise ModelError(f"{repo}: downloaded file is not a usable GGUF ({e.message})") from None
    card = repo_info.card_data
    record = registry.register(
        db, paths[0], model_id=new_id, provider=provider or owner, info=info, sha256=sha,
        source=f"hf:{repo}/{offer.files[0].path}", revision=commit,
        hf_source=_hf_source(info, getattr(card, "base_model", None) if card else None, repo))
    alias = f"{repo}:{offer.quant}"
    if alias != record["id"] and not db_models.exists(db, alias):
        db_models.set_alias(db, alias, record["id"])
    return record


def _check_space(paths: list[Path], files: tuple[RemoteFile, ...], folder: Path) -> None:
    need = 0
    for path, remote in zip(paths, files):
        if path.exists() or not remote.size:
            continue
        partial = sum(p.stat().st_size for p in path.parent.glob(f"{path.name}.*.part"))
        need += max(0, remote.size - partial)
    free = shutil.disk_usage(folder).free
    if need > free:
        raise ModelError(f"disk full: the download needs {need / 1e9:.2f} GB, "
                         f"{free / 1e9:.2f} GB free in {folder}")
