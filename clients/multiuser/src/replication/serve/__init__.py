"""The half of the package that speaks replication-serve's protocol,
through the project's Python client (``replication_client``)."""
