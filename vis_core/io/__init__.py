"""File I/O shared by every part of vis_core, free of torch unless asked for.

* :mod:`vis_core.io.atomic`: the one atomic-write helper (``atomic_path``, ``atomic_write_bytes/text``).
* :mod:`vis_core.io.config`: the strict typed-config parser (dataclasses from mappings, YAML, overrides).
* :mod:`vis_core.io.weights`: checkpoint reading that never runs code from the file, and loading a state
  dict into a model by matching names and shapes (imports torch).
"""
