"""Recipe stage 2: train VALL-E (AR decoder, then NAR decoders), resume or finetune.

    python bins/tts/train.py --config C --exp_name NAME [--model_train_stage 0|1|2]
        [--resume true|false] [--resume_type resume|finetune] [--resume_from_ckpt_path DIR]
        [--ar_model_ckpt_dir DIR]

This is one training process, on the first visible GPU or the CPU. `egs/tts/VALLE/run.sh
--stage 2 [--gpu 0,1] [--num_nodes N --node_rank R --master_addr H]` calls it, under `accelerate
launch` with one process per GPU (DDP) when several are visible (utils/launch.sh); without
run.sh, start it with `accelerate launch`, torchrun or srun (one task per GPU): it trains as the
rank they give it (README "Scaling out").
The training engine is models/base/trainer.py; VALL-E's part of it models/tts/valle/trainer.py.
"""

from __future__ import annotations

import logging
import sys

from bins.tts._cli import run_reporting
from models.base.train_data import DataError
from models.base.train_state import TrainingError
from models.tts.valle.trainer import main
from utils.checkpoint import CheckpointError
from utils.config import ConfigError

ERRORS = (ConfigError, DataError, CheckpointError, TrainingError)

if __name__ == "__main__":
    sys.exit(run_reporting(main, sys.argv[1:], ERRORS, logging.getLogger("codectts.train")))
