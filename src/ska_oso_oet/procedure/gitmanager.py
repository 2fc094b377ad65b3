"""Static helper functions for cloning and working with a Git repository."""

from __future__ import annotations

import dataclasses

DEFAULT_GIT_REPOSITORY = "https://gitlab.com/ska-telescope/oso/ska-oso-scripting.git"


@dataclasses.dataclass(frozen=True)
class GitArgs:
    """GitArgs captures information required to identify scripts located in git
    repositories."""

    git_repo: str = DEFAULT_GIT_REPOSITORY
    git_branch: str | None = None
    git_commit: str | None = None
