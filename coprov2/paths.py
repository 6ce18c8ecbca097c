"""Checks of paths and model names at the edge, before any work starts (one message per bad input)."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id

from coprov2.errors import UserError


def user_cache_dir(name: str) -> str:
    """``$XDG_CACHE_HOME/alignguard/<name>`` (``~/.cache`` without it): where a tool keeps its caches."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "alignguard", name)


def check_writable_dir(path: str | Path, option: str) -> None:
    """``path`` is (or can be created as) a folder this process can write into."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file, not a folder; pass a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UserError(
            f"{option} {path}: cannot write there ({error.strerror}); pick a writable folder"
        ) from None


def check_model(name: str, option: str) -> None:
    """``name`` is ``tiny:<kind>``, an existing local folder or file, or a well-formed Hub repo id."""
    if name.startswith("tiny:") or Path(name).expanduser().exists():
        return
    if name.startswith((".", "/", "~")):
        raise UserError(f"{option} {name}: no such folder")
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise UserError(f"{option} {name!r}: no such folder, and not a Hub repo id (owner/name)") from None


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The Hub client's network failures (its HTTP library's transport errors, whichever it uses) and OSError."""
    import importlib

    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx", "requests"):
        try:
            library = importlib.import_module(module)
        except ImportError:
            continue
        errors.append(getattr(library, "TransportError", None) or library.exceptions.ConnectionError)
    return tuple(errors)


def check_hub_access(
    name: str,
    option: str,
    revision: str | None = None,
    repo_type: str = "model",
    filename: str = "model_index.json",
) -> None:
    """``name`` (a Hub id; local folders and ``tiny:`` pass) can be opened now: its ``filename`` is in the local Hub
    cache, or one request to the Hub (no retries: the client's downloads retry each file for ~25 s offline) says
    this user may read it. Else one ``UserError`` naming the option, the id and the likely fix: a typo, an access
    request for a gated repo, ``HF_HUB_OFFLINE`` without the files cached, a local folder."""
    if name.startswith("tiny:") or Path(name).expanduser().exists():
        return
    check_model(name, option)
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(name, filename, revision=revision, repo_type=repo_type), str):
        return
    where = f"{option} {name}"
    url = f"https://huggingface.co/{'datasets/' if repo_type == 'dataset' else ''}{name}"
    download = f"hf download {name}{' --repo-type dataset' if repo_type == 'dataset' else ''}"
    if constants.HF_HUB_OFFLINE:
        raise UserError(f"{where}: not in the local Hub cache and HF_HUB_OFFLINE is set; download it once online "
                        f"({download}) or give a local folder")  # fmt: skip
    try:
        HfApi().auth_check(name, repo_type=repo_type)
    except GatedRepoError:
        raise UserError(f"{where}: a gated repo this account cannot read yet; request access on {url} and log "
                        "in (hf auth login)") from None  # fmt: skip
    except RepositoryNotFoundError:
        raise UserError(f"{where}: no such {repo_type} repo on the Hub, or a private one this account cannot see; "
                        "check the id for a typo, or log in (hf auth login)") from None  # fmt: skip
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", "an error")
        raise UserError(
            f"{where}: the Hub answered {status}; try again later, or give a local folder"
        ) from None
    except _transport_errors() as error:
        raise UserError(f"{where}: the Hub cannot be reached ({error}); check the network, or download it where "
                        f"there is one ({download}) and give the folder, or set HF_HUB_OFFLINE=1 with it cached") from None  # fmt: skip
