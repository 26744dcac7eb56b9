"""Qwen2.5-VL's processor built without torchvision, for the consumer test environments.

transformers' fast image and video processors for Qwen2-VL need torchvision, whose PyPI builds
are CUDA builds that break `import transformers` on this CPU machine, so `AutoProcessor` fails on
the video processor. Images do not need it: the PIL image processor does the same resizing and
patching. The video processor is a bare `BaseVideoProcessor` that nothing calls (the exports hold
no videos)."""

from pathlib import Path


def image_only_processor(model_dir: str | Path):
    from transformers import AutoTokenizer
    from transformers.models.qwen2_5_vl import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.video_processing_utils import BaseVideoProcessor

    class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
        def check_argument_for_proper_class(self, argument_name, argument):
            # transformers resolves the expected video class to a torchvision-only placeholder
            if argument_name == "video_processor":
                return type(argument)
            return super().check_argument_for_proper_class(argument_name, argument)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return ImageOnlyQwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(model_dir),
        tokenizer=tokenizer,
        video_processor=BaseVideoProcessor(),
        chat_template=tokenizer.chat_template,
    )


def patch_auto_processor(model_dir: str | Path) -> None:
    """Make `AutoProcessor.from_pretrained(model_dir)` (what LLaMA-Factory and TRL call) return
    the image-only processor for our tiny model; other paths are untouched."""
    from transformers import AutoProcessor

    original = AutoProcessor.from_pretrained.__func__
    target = str(Path(model_dir).resolve())

    def from_pretrained(cls, name, *args, **kwargs):
        if str(Path(str(name)).resolve()) == target:
            return image_only_processor(target)
        return original(cls, name, *args, **kwargs)

    AutoProcessor.from_pretrained = classmethod(from_pretrained)
