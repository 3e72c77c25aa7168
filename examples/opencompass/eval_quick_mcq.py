# A small OpenCompass config that runs anywhere in a minute or two (CPU is fine): a multiple-choice
# dataset in OpenCompass's custom-dataset format (quick_mcq.jsonl: question, A..D, answer), scored in
# ppl mode (each option's full prompt is scored; the option with the lowest perplexity is the prediction).
# Used by examples/opencompass_quickcheck.yaml. The dataset path is made from this file's own location, so
# it is found wherever accbench is started from (mmengine's {{fileDirname}} is not filled in for configs
# that import OpenCompass, as this one does).
import os.path as osp

from opencompass.models import HuggingFaceBaseModel

# a dataset entry without `type` is a custom dataset: OpenCompass builds the prompt and evaluator from it
datasets = [dict(path=osp.join(osp.dirname(__file__), 'quick_mcq.jsonl'), data_type='mcq', infer_method='ppl')]

models = [
    dict(
        type=HuggingFaceBaseModel,
        abbr='quick',
        max_seq_len=512,
        max_out_len=8,
        batch_size=8,
        model_kwargs=dict(torch_dtype='torch.float32'),
        run_cfg=dict(num_gpus=0),
    )
]
