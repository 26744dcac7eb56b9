"""One LLaMA-Factory training run from a JSON file of arguments, with Qwen2.5-VL's processor
built without torchvision (see image_only_processor.py):

    python tests/consumers/llamafactory/train_step.py ARGS.json
"""

import json
import sys

from tests.consumers.image_only_processor import patch_auto_processor

if __name__ == "__main__":
    args = json.loads(open(sys.argv[1]).read())
    patch_auto_processor(args["model_name_or_path"])
    from llamafactory.train.tuner import run_exp

    run_exp(args)
