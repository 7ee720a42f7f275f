"""Recipe stage 2 for Parler-TTS: fine-tune a released model (or continue an experiment).

    python bins/tts/parler_train.py --config C --exp_name NAME [--resume true|false]
        [--resume_type resume|finetune] [--resume_from_ckpt_path DIR]

A fresh experiment starts from `model.pretrained` (a released-layout folder or hub id); with
`--resume_type finetune --resume_from_ckpt_path E` it starts from another experiment's weights.
One training process; `egs/tts/ParlerTTS/run.sh --stage 2 [--gpu 0,1]` runs one per GPU under
`accelerate launch` (DDP). Engine: models/base/trainer.py; Parler's part:
models/tts/parler/trainer.py.
"""

from __future__ import annotations

import logging
import sys

from bins.tts._cli import run_reporting
from models.base.train_data import DataError
from models.base.train_state import TrainingError
from models.tts.parler.pretrained import ParlerLoadError
from models.tts.parler.trainer import main
from utils.checkpoint import CheckpointError
from utils.config import ConfigError

ERRORS = (ConfigError, DataError, CheckpointError, TrainingError, ParlerLoadError)

if __name__ == "__main__":
    sys.exit(run_reporting(main, sys.argv[1:], ERRORS, logging.getLogger("codectts.train")))
