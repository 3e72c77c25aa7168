# OpenCompass config for accbench's opencompass section: HumanEval on a CHAT (instruction-tuned) model.
#
# Same contract as eval_humaneval_base.py: no `path` in the model entry, accbench fills it in per evaluated
# model. The chat model class applies the tokenizer's chat template, so the saved model directory must keep
# the tokenizer files (accbench's save does). The prompt is OpenCompass's instruction-style HumanEval prompt
# ("Read the following function signature and docstring, and fully implement the function described ..."),
# the one its `humaneval_gen` alias points to; code is taken out of the markdown block the model writes.
from mmengine.config import read_base
from opencompass.models import HuggingFacewithChatTemplate

with read_base():
    from opencompass.configs.datasets.humaneval.humaneval_openai_sample_evals_gen_dcae0e import humaneval_datasets

datasets = [*humaneval_datasets]

models = [
    dict(
        type=HuggingFacewithChatTemplate,
        abbr='chat',
        max_out_len=1024,             # chat models explain before and after the code
        batch_size=16,
        model_kwargs=dict(torch_dtype='torch.bfloat16'),
        # stop at the model's end-of-turn token; these are Llama-3's, use your model's
        stop_words=['<|end_of_text|>', '<|eot_id|>'],
        run_cfg=dict(num_gpus=1),
    )
]
