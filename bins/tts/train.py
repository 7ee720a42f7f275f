"""Recipe stage 2: train VALL-E (AR decoder, then NAR decoders), resume or finetune.

    python bins/tts/train.py --config C --exp_name NAME [--train_stage 0|1|2]
        [--resume true|false] [--resume_type resume|finetune] [--resume_from_ckpt_path DIR]
        [--ar_model_ckpt_dir DIR] [--gpu 0,1]

(`egs/tts/VALLE/run.sh --stage 2` calls this.) One process trains in this process (one GPU, or
the CPU when there is none); a --gpu list of several ids (or several visible GPUs) re-launches
this script with `accelerate launch`, one process per GPU, on a free port. The training logic is
in models/tts/valle/trainer.py.
"""

from __future__ import annotations

import logging
import sys

from models.tts.valle.dataset import DataError
from models.tts.valle.trainer import TrainingError, main
from utils.checkpoint import CheckpointError
from utils.config import ConfigError

if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
    try:
        sys.exit(main(sys.argv[1:], script=__file__))
    except (ConfigError, DataError, CheckpointError, TrainingError) as e:
        logging.getLogger("codectts.train").error("%s", e)
        sys.exit(1)
