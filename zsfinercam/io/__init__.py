"""Images in, files out: decoding and resizing, rendering maps, writing result files, progress."""
