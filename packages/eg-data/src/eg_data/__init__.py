"""eg-data: webdataset shards (img2dataset layout), URL-list downloader, transforms, bad-sample handling
and the offline demo dataset. Produces the batch dict of the Edge Glass architecture contract.

The demo builder and the URL downloader need extras (`eg-data[demo]`, `eg-data[download]`); importing
eg_data needs neither."""

from eg_data.audio_captions import AUDIO_CAPTION_REASONS, AudioCaptionsConfig, import_audio_captions
from eg_data.buffers import BatchPool
from eg_data.config import LoaderConfig, SourceConfig
from eg_data.demo import build_demo_dataset, is_demo_complete
from eg_data.download import DownloadConfig, download_urls, read_url_list
from eg_data.errors import DataError
from eg_data.loader import ShardLoader
from eg_data.mixture import MixtureLoader
from eg_data.report import BAD_REASONS, merge_data_reports
from eg_data.samples import decode_sample
from eg_data.shards import ShardInfo, ShardWriter, load_index, read_all
from eg_data.speak import SPEAK_REASONS, SpeakConfig, speak_shards
from eg_data.speech import VOICES, Speaker, Voice
from eg_data.transforms import AudioTransformConfig, ImageTransformConfig, transform_audio, transform_image

__version__ = "0.3.0"

__all__ = [
    "AUDIO_CAPTION_REASONS",
    "BAD_REASONS",
    "SPEAK_REASONS",
    "VOICES",
    "AudioCaptionsConfig",
    "AudioTransformConfig",
    "BatchPool",
    "DataError",
    "DownloadConfig",
    "ImageTransformConfig",
    "LoaderConfig",
    "MixtureLoader",
    "ShardInfo",
    "ShardLoader",
    "ShardWriter",
    "SourceConfig",
    "SpeakConfig",
    "Speaker",
    "Voice",
    "build_demo_dataset",
    "decode_sample",
    "download_urls",
    "import_audio_captions",
    "is_demo_complete",
    "load_index",
    "merge_data_reports",
    "read_all",
    "read_url_list",
    "speak_shards",
    "transform_audio",
    "transform_image",
]
