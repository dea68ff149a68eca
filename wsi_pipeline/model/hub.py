"""Files of Hugging Face Hub model repos, through ``huggingface_hub``: its cache (``HF_HOME``), endpoint
(``HF_ENDPOINT``), offline mode (``HF_HUB_OFFLINE``) and tokens work as for any hub user. Its errors become
one-line ``InputError``s naming the model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from huggingface_hub import constants, errors, hf_hub_download

from wsi_pipeline.core.errors import InputError, summarise_error
from wsi_pipeline.core.version import __version__

LIBRARY = "wsi_pipeline"


def download(spec: str, repo: str, filenames: Sequence[str], revision: str | None) -> tuple[str, Path]:
    """(name, path in the hub cache) of the first of ``filenames`` the repo has at ``revision``; one-line
    ``InputError`` when it has none, or they are not cached and the hub cannot be reached."""
    uncached = False
    for filename in filenames:
        try:
            return filename, Path(_hf_hub_download(spec, repo, filename, revision))
        except errors.LocalEntryNotFoundError:  # offline (or the hub unreachable) and not in the cache
            uncached = True
        except errors.EntryNotFoundError:  # the repo has no such file
            continue
    wanted = " or ".join(filenames)
    if uncached:
        raise InputError(spec, offline_problem(spec, f"{wanted} of {repo}"))
    raise InputError(spec, f"{repo} has no {wanted} (revision {revision or constants.DEFAULT_REVISION})")


def download_optional(spec: str, repo: str, filename: str, revision: str) -> Path | None:
    """A file the model works without (a README): its path, or None when the repo has none or it cannot be
    had."""
    try:
        return Path(_hf_hub_download(spec, repo, filename, revision))
    except errors.EntryNotFoundError:
        return None


def commit_of(path: Path, filename: str) -> str:
    """The commit hash of a file's snapshot folder in the hub cache (``snapshots/<commit>/<filename>``)."""
    return path.parents[len(PurePosixPath(filename).parts) - 1].name


def offline_problem(spec: str, missing: str) -> str:
    """Why a model cannot be had without the hub, and how to get it there."""
    mode = "HF_HUB_OFFLINE=1" if constants.is_offline_mode() else "no connection"
    return (
        f"{missing} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the hub cannot be "
        f"reached ({mode}); on a machine with network run `wsi-models pull {spec}` and copy its $HF_HOME "
        "here (or point HF_HOME at a copy), or allow downloads (HF_HUB_OFFLINE=0)"
    )


def asset_folder(spec: str, commit: str) -> Path:
    """Our folder for what we derive from a repo's files at ``commit``, in the hub's assets cache
    (``$HF_HOME/assets/wsi_pipeline/<spec>/<commit>``), so a copy of ``$HF_HOME`` carries it along."""
    from huggingface_hub import cached_assets_path

    namespace = spec.replace(":", "--")
    return cached_assets_path(LIBRARY, namespace, commit, assets_dir=constants.HF_ASSETS_CACHE)


def readme_metadata(path: Path | None) -> dict:
    """The YAML metadata of a repo's README (licence, tags, ...), or {} when there is none."""
    from huggingface_hub.repocard import metadata_load

    try:
        return (metadata_load(path) or {}) if path is not None else {}
    except Exception:  # malformed YAML: the licence is then unknown, the model still usable
        return {}


def _hf_hub_download(spec: str, repo: str, filename: str, revision: str | None) -> str:
    """``hf_hub_download`` with the hub's errors, other than a missing file, as one-line ``InputError``s."""
    try:
        return hf_hub_download(
            repo,
            filename,
            revision=revision,
            library_name=LIBRARY,
            library_version=__version__,
        )
    except errors.GatedRepoError:
        problem = f"{repo} is gated: accept its conditions on its hub page, then log in (`hf auth login`)"
    except errors.RepositoryNotFoundError:
        problem = f"no repository {repo} on {constants.ENDPOINT} (if private, log in: `hf auth login`)"
    except errors.RevisionNotFoundError:
        problem = f"{repo} has no revision {revision!r}"
    except errors.EntryNotFoundError:
        raise
    except (errors.HfHubHTTPError, errors.HFValidationError, OSError) as error:
        problem = f"cannot download {filename} of {repo} ({summarise_error(error)})"
    raise InputError(spec, problem)
