"""`stentor push DIR --repo USER/NAME`: upload a model directory to the Hugging Face Hub.

Only a directory another user can load and read about is uploaded: a model card (README.md), weights in
safetensors, config.json and the tokenizer's files. Checkpoint pickles, temporary files and caches never
go up. The token is huggingface_hub's (HF_TOKEN, or the login cache of `hf auth login`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stentor.errors import StentorError

SKIPPED_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".tmp", ".lock")  # pickles and partials: never published


@dataclass(frozen=True)
class Upload:
    path: str  # relative to the directory
    size: int


def upload_plan(model_dir: str | Path) -> list[Upload]:
    """The files `push` would upload, or a StentorError naming what the directory lacks."""
    root = Path(model_dir)
    if not root.is_dir():
        raise StentorError(f"{root} is not a directory; give a model directory such as RUN/final")
    files = sorted(f for f in root.rglob("*") if f.is_file() and not any(part.startswith((".", "__pycache__"))
                   for part in f.relative_to(root).parts) and not f.name.endswith(SKIPPED_SUFFIXES))  # fmt: skip
    names = {f.name for f in files}
    missing = []
    if "README.md" not in names:
        missing.append("a model card (README.md: run `stentor card RUN`)")
    if not any(n.endswith(".safetensors") for n in names):
        missing.append("weights in safetensors (model.safetensors)")
    if "config.json" not in names:
        missing.append("config.json")
    if "tokenizer_config.json" not in names or not names & {"tokenizer.json", "tokenizer.vocab", "tokenizer.model"}:
        missing.append("the tokenizer's files (tokenizer_config.json and tokenizer.json / tokenizer.vocab)")
    if missing:
        raise StentorError(f"{root} is not ready to publish: it lacks {'; '.join(missing)}")
    return [Upload(str(f.relative_to(root)), f.stat().st_size) for f in files]


def push(model_dir: str | Path, repo: str, *, private: bool = False, revision: str | None = None,
         token: str | None = None) -> str:
    """Create `repo` if needed (and the `revision` branch) and upload the plan's files; returns the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from stentor.hub import hub_offline

    plan = upload_plan(model_dir)
    if len(repo.split("/")) != 2 or not all(repo.split("/")):
        raise StentorError(f"--repo {repo!r} must be USER/NAME (or ORG/NAME)")
    if hub_offline():
        raise StentorError("the Hugging Face hub is unreachable (offline or HF_HUB_OFFLINE is set); push from a "
                           "machine with network access (`stentor push --dry-run` lists what would go up)")  # fmt: skip
    api = HfApi(token=token)
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo, branch=revision, exist_ok=True)
        info = api.upload_folder(folder_path=str(model_dir), repo_id=repo, revision=revision,
                                 allow_patterns=[u.path for u in plan],
                                 commit_message=f"Upload {Path(model_dir).name} with stentor")  # fmt: skip
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise StentorError(f"the hub refused the upload to {repo} ({status}): log in with a token that can write "
                               "there (`hf auth login`, or set HF_TOKEN)") from None  # fmt: skip
        raise StentorError(f"the hub refused the upload to {repo}: {str(exc).splitlines()[0][:200]}") from None
    except Exception as exc:  # connection failures (the HTTP client's own types): one line, no traceback
        raise StentorError(f"cannot reach the Hugging Face hub ({type(exc).__name__}: {str(exc)[:120]}); check the "
                           "network and retry") from None  # fmt: skip
    return str(getattr(info, "commit_url", info))
