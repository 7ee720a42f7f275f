"""Download a released Amphion VALL-E checkpoint (only what inference needs).

    python bins/tts/download.py [--repo_id amphion/valle_libritts] [--local_dir DIR]

The release holds `args.json` (Amphion's full config), `symbols.dict` (phone table) and
`checkpoint/<name>/pytorch_model.bin` (or `model.safetensors`), plus multi-GB training state
(`optimizer.bin`, `random_states_*.pkl`, ...) that inference never reads: only the first three are
fetched. Use the folder with `run.sh --stage 3 --infer_expt_dir DIR`.

Offline (or behind a firewall) this fails with a message saying how to place the files by hand.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import huggingface_hub
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

from utils.config import REPO_ROOT

log = logging.getLogger("download")

DEFAULT_REPO_ID = "amphion/valle_libritts"
# Everything inference reads; `fnmatch` patterns, so `*` also crosses folder separators.
ALLOW_PATTERNS = [
    "args.json",
    "symbols.dict",
    "README.md",
    "checkpoint/*/pytorch_model.bin",
    "checkpoint/*/model.safetensors",
]
# Training state, never needed for inference (and pickles that must not be loaded anyway).
IGNORE_PATTERNS = ["*optimizer*", "*scheduler*", "*random_states*", "*.pkl"]


class DownloadError(RuntimeError):
    """The checkpoint could not be fetched; the message says how to get it by hand."""


def manual_instructions(repo_id: str, local_dir: Path) -> str:
    url = f"https://huggingface.co/{repo_id}"
    return (
        f"To install it by hand, fetch these files from {url}/tree/main on a machine with "
        f"internet access (e.g. `git clone {url}`, or the web page's download buttons) and place "
        "them like this:\n"
        f"  {local_dir}/args.json\n"
        f"  {local_dir}/symbols.dict\n"
        f"  {local_dir}/checkpoint/<checkpoint name>/pytorch_model.bin   (or model.safetensors)\n"
        "optimizer.bin, scheduler.bin and random_states_*.pkl are training state and are not "
        "needed. Then run:\n"
        f"  sh egs/tts/VALLE/run.sh --stage 3 --infer_expt_dir {local_dir} --infer_mode single ..."
    )


def check_release_folder(local_dir: Path) -> list[str]:
    """Names of the files inference needs that are missing from a release folder."""
    missing = [name for name in ("args.json", "symbols.dict") if not (local_dir / name).is_file()]
    weights = [
        p
        for pattern in ("checkpoint/*/pytorch_model.bin", "checkpoint/*/model.safetensors")
        for p in local_dir.glob(pattern)
    ]
    if not weights:
        missing.append("checkpoint/<name>/pytorch_model.bin (or model.safetensors)")
    return missing


def download(repo_id: str, local_dir: Path, revision: str | None = None) -> Path:
    """Fetch the inference files of `repo_id` into `local_dir`; returns the folder."""
    local_dir = Path(local_dir)
    try:
        huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            local_dir=local_dir,
            allow_patterns=ALLOW_PATTERNS,
            ignore_patterns=IGNORE_PATTERNS,
        )
    except (LocalEntryNotFoundError, ConnectionError, TimeoutError) as e:
        # LocalEntryNotFoundError is what snapshot_download raises when the Hub is unreachable
        # (no network, HF_HUB_OFFLINE=1) and nothing is cached.
        raise DownloadError(
            f"could not download {repo_id}: the Hugging Face Hub is not reachable from here "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}).\n"
            + manual_instructions(repo_id, local_dir)
        ) from None
    except HfHubHTTPError as e:
        raise DownloadError(
            f"could not download {repo_id}: {str(e).splitlines()[0][:300]}\n"
            + manual_instructions(repo_id, local_dir)
        ) from None
    missing = check_release_folder(local_dir)
    if missing:
        raise DownloadError(
            f"{repo_id} was downloaded to {local_dir} but it lacks {', '.join(missing)}; "
            "it does not look like an Amphion VALL-E release.\n"
            + manual_instructions(repo_id, local_dir)
        )
    return local_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo_id", default=DEFAULT_REPO_ID, help="Hugging Face model repo")
    parser.add_argument(
        "--local_dir",
        type=Path,
        default=None,
        help="destination folder [ckpts/tts/<repo name> in the repository]",
    )
    parser.add_argument("--revision", default=None, help="branch, tag or commit [main]")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    local_dir = args.local_dir or REPO_ROOT / "ckpts" / "tts" / args.repo_id.split("/")[-1]
    try:
        download(args.repo_id, local_dir, args.revision)
    except DownloadError as e:
        log.error("%s", e)
        return 1
    log.info("%s is ready in %s (use it as --infer_expt_dir)", args.repo_id, local_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
