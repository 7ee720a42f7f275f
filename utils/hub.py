"""A local folder or a Hugging Face hub id -> a local folder, with an offline message that says
what to place where (models loaded with `from_pretrained`-style folders: Parler-TTS, DAC)."""

from __future__ import annotations

import re
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubError(RuntimeError):
    """The source is neither a folder nor fetchable; the message says what to do."""


def local_snapshot(source: str, allow_patterns: list[str], what: str) -> Path:
    """`source` as a folder: an existing directory is used as is; a hub id (`owner/name`) is
    fetched (only `allow_patterns`) into the hub cache, or taken from it when already there."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if not HUB_ID.match(source):
        raise HubError(f"{what}: {source} is not a folder (and not a hub id owner/name)")
    import huggingface_hub

    try:
        return Path(huggingface_hub.snapshot_download(source, allow_patterns=allow_patterns))
    except Exception as e:  # offline, firewall, unknown repo, gated repo ...
        raise HubError(
            f"{what}: cannot fetch {source} from the Hugging Face hub "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}). "
            f"On a machine with internet run `huggingface-cli download {source} --local-dir "
            f"DIR` (or copy https://huggingface.co/{source}/tree/main), bring DIR here and give "
            "DIR instead of the hub id"
        ) from None
