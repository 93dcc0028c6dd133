"""Media: a path, URL or pipe to timed RGB frames (probing, sampling plans, decoding, keyframes,
parallel decoding, file names). The lowest layer: it never imports torch or anything above it."""
