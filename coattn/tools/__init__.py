"""Command-line tools built on the library and the app: search, synth, augment, data-check, prepare, sweep."""
