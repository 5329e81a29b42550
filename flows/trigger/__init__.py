"""What starts an emergency from outside: the compromise checks, the Prefect automation and the compromise
forwarder."""
