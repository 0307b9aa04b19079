"""The half of the package that speaks replication-serve protocol v1,
through the project's Python client (``replication_client``)."""
