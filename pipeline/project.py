"""Where the project's own files are (dagster.yaml, workspace.yaml, deploy/): the checkout's root."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
