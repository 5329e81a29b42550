"""The ``langfuse-rotate`` command line: the main parser, the fleet and inventory commands and their output."""
