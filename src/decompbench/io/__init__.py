"""Data in and out of decompbench: toy activations for training elsewhere (``acts``) and
dictionaries trained elsewhere, in other libraries' formats (``dictionaries``)."""
