"""Reading, the library: frames to features to the model's memory to results (the one reading loop,
its readers, the feature cache). Imports `models` and the media layer, nothing above it."""
