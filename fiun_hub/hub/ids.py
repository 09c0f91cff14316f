"""Repo ids, revisions, request ids and in-repo paths, as the hub package names them: the rules live in
:mod:`fiun_hub.ids` (the formats tier, which the card reads too); this module re-exports them, so
``fiun_hub.hub.ids`` keeps working for every caller."""
from __future__ import annotations

from ..ids import (
    COMMIT_RE,
    MAX_PATH,
    REF_NAME_RE,
    REPO_ID_RE,
    REQUEST_ID_RE,
    check_user_writable,
    repo_folder_name,
    repo_from_folder,
    split_repo_rev,
    validate_ref_name,
    validate_repo_id,
    validate_repo_path,
    validate_request_id,
    validate_tag_name,
)

__all__ = ["COMMIT_RE", "MAX_PATH", "REF_NAME_RE", "REPO_ID_RE", "REQUEST_ID_RE", "check_user_writable",
           "repo_folder_name", "repo_from_folder", "split_repo_rev", "validate_ref_name", "validate_repo_id",
           "validate_repo_path", "validate_request_id", "validate_tag_name"]
