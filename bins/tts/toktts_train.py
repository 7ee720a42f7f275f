"""TokTTS recipe stage 2 (`egs/tts/TokTTS/run.sh --stage 2`): train, resume or finetune.

    python bins/tts/toktts_train.py --config C --exp_name NAME [--resume true|false]
        [--resume_type resume|finetune] [--resume_from_ckpt_path DIR]

One training process, on the first visible GPU or the CPU; run.sh starts one per visible GPU
under `accelerate launch` (DDP) when several are visible (utils/launch.sh). The training engine
is models/base/trainer.py; TokTTS's part of it models/tts/toktts/trainer.py.
"""

from __future__ import annotations

import logging
import sys

from bins.tts._cli import run_reporting
from models.base.train_data import DataError
from models.base.train_state import TrainingError
from models.tts.toktts.pipeline import ModelDirError
from models.tts.toktts.trainer import main
from utils.checkpoint import CheckpointError
from utils.config_loader import ConfigError

ERRORS = (ConfigError, DataError, CheckpointError, TrainingError, ModelDirError)

if __name__ == "__main__":
    sys.exit(run_reporting(main, sys.argv[1:], ERRORS, logging.getLogger("codectts.train")))
