"""Talking to a Hugging Face hub: the endpoint (HF_ENDPOINT, read at call time) and the mapping
of huggingface_hub's and the transport's errors to one-line LlmpErrors. Shared by `hub` (GGUF
pulls) and `convert` (safetensors fetches); its own module so that `convert` does not import
`hub` (hub -> registry -> lora -> convert would come back round)."""
from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterator

from llmp.errors import InvalidRequestError, LlmpError, ModelError, NotFoundError


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


@contextlib.contextmanager
def _hub_errors(repo: str, revision: str | None, endpoint: str) -> Iterator[None]:
    """Map huggingface_hub and transport errors to one-line LlmpErrors."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    hf_logger = logging.getLogger("huggingface_hub")
    level = hf_logger.level
    # its retry warnings ("Trying to resume download...") would break the progress display;
    # what fails in the end is reported once, below
    hf_logger.setLevel(logging.ERROR)
    try:
        yield
    except LlmpError:
        raise
    except GatedRepoError:
        raise ModelError(f"{repo} is gated: accept its terms on the hub, then set HF_TOKEN "
                         "to a token of that account") from None
    except RepositoryNotFoundError:
        raise NotFoundError(f"repository {repo} not found on {endpoint} (a private repo "
                            "needs HF_TOKEN)", param="model") from None
    except RevisionNotFoundError:
        raise NotFoundError(f"revision {revision!r} not found in {repo}",
                            param="revision") from None
    except RemoteEntryNotFoundError as e:
        raise NotFoundError(f"file not found in {repo}: {_first_line(e)}") from None
    except HFValidationError as e:
        raise InvalidRequestError(f"{repo}: {_first_line(e)}", param="model") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        if status in (401, 403):
            raise ModelError(f"the hub refused access to {repo} (HTTP {status}): set HF_TOKEN "
                             "to a token that can read it") from None
        raise ModelError(f"the hub answered HTTP {status} for {repo}; run the command again "
                         "to resume") from None
    except httpx2.HTTPError as e:
        raise ModelError(f"connection to {endpoint} failed ({_first_line(e) or type(e).__name__}); "
                         "run the command again (a download resumes where it stopped)") from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise ModelError(f"disk full while downloading {repo}") from None
        raise ModelError(f"download of {repo} failed: {_first_line(e)}; run the command "
                         "again to resume") from None
    finally:
        hf_logger.setLevel(level)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""
