"""berg's core: the model contract, the engine, layouts, readouts, output spaces and ensembles.

Nothing in this package imports from ``berg.models``, ``berg.api``, ``berg.cli``, ``berg.runner``,
``berg.experiments`` or ``berg.training`` (tests/test_layering.py checks it): plug-ins build on the
core, never the reverse.
"""
