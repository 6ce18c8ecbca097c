"""Config of stage ``images`` (a leaf module: no stage imports)."""

from __future__ import annotations

from dataclasses import dataclass, field

IMAGE_FORMATS = ("png", "webp")


@dataclass
class ImagesConfig:
    """How the text-to-image model renders the pairs, and how the work is cut."""

    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    dtype: str = field(
        default="auto", metadata={"help": "auto (fp16 on GPU, fp32 on CPU), float16, bfloat16, float32"}
    )
    steps: int = field(default=30, metadata={"help": "denoising steps"})
    guidance: float = field(default=7.5, metadata={"help": "classifier-free guidance scale"})
    height: int | None = field(default=None, metadata={"help": "image height (default: the model's)"})
    width: int | None = field(default=None, metadata={"help": "image width (default: the model's)"})
    negative_prompt: str | None = field(default=None, metadata={"help": "negative prompt for every image"})
    batch_pairs: int = field(
        default=4,
        metadata={"help": "pairs per pipeline call (2x images); one call is the most a kill can lose"},
    )
    shard_pairs: int = field(
        default=256,
        metadata={
            "help": "pairs per images/gate shard: the unit processes share (23,690 pairs -> 93 shards), "
            "independent of the number of processes"
        },
    )
    compile: bool = field(default=False, metadata={"help": "torch.compile the UNet (GPU; slow first batch)"})
    image_format: str = field(
        default="png", metadata={"help": "png or webp, both lossless", "choices": IMAGE_FORMATS}
    )
    seed: int = 0
