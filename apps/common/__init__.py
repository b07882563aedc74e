"""What both stages share: the command lines, config loading, eg-data loaders, retrieval metrics, plots."""
