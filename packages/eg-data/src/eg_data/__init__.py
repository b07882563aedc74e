"""eg-data: Webdataset shards, URL-list downloader, transforms, bad-sample handling and the offline demo dataset."""

__version__ = "0.1.0"

__all__: list[str] = []
