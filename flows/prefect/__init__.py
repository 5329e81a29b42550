"""Everything that talks to Prefect: its REST API, the flow run's record (artifacts, events, hooks), the trust
boundary and who started a run."""
