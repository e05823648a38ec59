"""The school gateway: ingest, verification and (growing) storage and forwarding of scan records."""
