"""Fleet rotation (``rotate --all``): every entry concurrently, paced, in batches, with or without Prefect."""
