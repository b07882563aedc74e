"""eg-data: webdataset shards (img2dataset layout), URL-list downloader, transforms, bad-sample handling
and the offline demo dataset. Produces the batch dict of the Edge Glass architecture contract."""

from .buffers import BatchPool
from .demo import build_demo_dataset, is_demo_complete
from .download import DownloadConfig, download_urls, read_url_list
from .errors import DataError
from .loader import BAD_REASONS, LoaderConfig, ShardLoader, collate, decode_sample
from .shards import ShardInfo, ShardWriter, load_index, read_all
from .speech import Speaker, Voice
from .transforms import AudioTransformConfig, ImageTransformConfig, transform_audio, transform_image

__version__ = "0.1.0"

__all__ = [
    "BAD_REASONS",
    "AudioTransformConfig",
    "BatchPool",
    "DataError",
    "DownloadConfig",
    "ImageTransformConfig",
    "LoaderConfig",
    "ShardInfo",
    "ShardLoader",
    "ShardWriter",
    "Speaker",
    "Voice",
    "build_demo_dataset",
    "collate",
    "decode_sample",
    "download_urls",
    "is_demo_complete",
    "load_index",
    "read_all",
    "read_url_list",
    "transform_audio",
    "transform_image",
]
